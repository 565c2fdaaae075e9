"""`dispatcher runner add | list | revoke`: the runner registry."""

from __future__ import annotations

import argparse

from dispatcher import admin
from dispatcher.cli_common import SubParsers, add_json_flag, connect, print_json
from dispatcher.keys import Keys
from dispatcher.settings import Settings


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    runner = subparsers.add_parser("runner", parents=[common], help="manage runners")
    actions = runner.add_subparsers(dest="runner_action", metavar="ACTION", required=True)

    add = actions.add_parser("add", parents=[common], help="register a runner, print its token")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--spec",
        action="append",
        required=True,
        dest="specs",
        help="a spec the runner serves (repeat for several)",
    )
    add_json_flag(add)
    add.set_defaults(handler=add_runner)

    listing = actions.add_parser("list", parents=[common], help="list runners")
    add_json_flag(listing)
    listing.set_defaults(handler=list_runners)

    revoke = actions.add_parser("revoke", parents=[common], help="revoke a runner's token")
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(handler=revoke_runner)


def add_runner(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings) as client:
        token = admin.add_runner(client, Keys(settings.namespace), args.name, args.specs)
    if args.json:
        print_json({"name": args.name, "token": token, "specs": args.specs})
    else:
        print(f"runner {args.name} added (specs: {', '.join(args.specs)})")
        print(f"token: {token}")
        print("The token is shown only this once; Redis keeps only its SHA-256.")
    return 0


def list_runners(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings) as client:
        runners = admin.list_runners(client, Keys(settings.namespace))
    if args.json:
        print_json(runners)
        return 0
    if not runners:
        print("no runners")
        return 0
    header = ("NAME", "STATE", "SPECS", "POD", "JOB", "LAST SEEN")
    rows = [header] + [
        (
            r["name"],
            r["state"],
            ",".join(r["specs"]),
            r["pod"] or "-",
            r["job"] or "-",
            r["last_seen"] or "-",
        )
        for r in runners
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def revoke_runner(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings) as client:
        admin.revoke_runner(client, Keys(settings.namespace), args.name)
    print(f"revoked {args.name}")
    return 0
