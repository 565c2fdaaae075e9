"""`dispatcher runner add | list | rotate | revoke | pause | resume`: the runner registry."""

from __future__ import annotations

import argparse

from dispatcher import admin, functions
from dispatcher.cli_common import SubParsers, add_json_flag, connect, epilog, print_json
from dispatcher.keys import Keys
from dispatcher.settings import Settings

TOKEN_NOTE = """\
The token is shown only this once (Redis keeps its SHA-256). Give it to the runner as
DISPATCH_RUNNER_TOKEN (dispatch-runner reads it from there)."""


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    runner = subparsers.add_parser(
        "runner",
        parents=[common],
        help="manage runners",
        description="Register, list, rotate the token of, and revoke runners.",
        epilog=epilog(
            "  dispatcher runner add build-01 --spec linux --spec linux-gpu\n"
            "  dispatcher runner list\n"
            "  dispatcher runner rotate build-01\n"
            "  dispatcher runner revoke build-01"
        ),
    )
    actions = runner.add_subparsers(dest="runner_action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        parents=[common],
        help="register a runner, print its token",
        description="Register runner NAME for one or more specs and print its new token.",
        epilog=epilog(
            "  dispatcher runner add build-01 --spec linux\n"
            "  dispatcher runner add gpu-02 --spec linux --spec linux-gpu --json\n"
            "  dispatcher runner add vm-7f3a --spec linux --ephemeral   one job, then it is gone",
            notes=TOKEN_NOTE,
        ),
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--spec",
        action="append",
        required=True,
        dest="specs",
        help="a spec the runner serves (repeat for several)",
    )
    add.add_argument(
        "--ephemeral",
        action="store_true",
        help="one job only: the registration (and the token) ends once its first job ends",
    )
    add_json_flag(add)
    add.set_defaults(handler=add_runner)

    listing = actions.add_parser(
        "list",
        parents=[common],
        help="list runners",
        description="Every registered runner: state, specs, pod, job in flight, last seen.",
        epilog=epilog("  dispatcher runner list\n  dispatcher runner list --json"),
    )
    add_json_flag(listing)
    listing.set_defaults(handler=list_runners)

    rotate = actions.add_parser(
        "rotate",
        parents=[common],
        help="give a runner a new token (the old one stops working at once)",
        description="Replace runner NAME's token in one atomic step: the old token is refused "
        "from now on and a live connection is closed with 4001. Specs and a job in flight stay: "
        "the runner, restarted with the new token, takes its job up again.",
        epilog=epilog(
            "  dispatcher runner rotate build-01\n  dispatcher runner rotate build-01 --json",
            notes=TOKEN_NOTE,
        ),
    )
    rotate.add_argument("name", metavar="NAME")
    add_json_flag(rotate)
    rotate.set_defaults(handler=rotate_runner)

    revoke = actions.add_parser(
        "revoke",
        parents=[common],
        help="revoke a runner's token",
        description="Remove runner NAME: its token stops working and a live connection is "
        "closed with 4001; a job in flight keeps its lease and is re-queued or failed when it "
        "runs out.",
        epilog=epilog("  dispatcher runner revoke build-01"),
    )
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(handler=revoke_runner)
    register_pause(actions, common)


def register_pause(actions: SubParsers, common: argparse.ArgumentParser) -> None:
    pause = actions.add_parser(
        "pause",
        parents=[common],
        help="offer a runner nothing until resumed",
        description="Pause runner NAME, whichever pod holds it: it stays connected and finishes "
        "a job in flight, and is offered nothing until resumed (a waiting runner leaves the idle "
        "sets at once).",
        epilog=epilog(
            "  dispatcher runner pause build-01\n  dispatcher runner pause build-01 --json"
        ),
    )
    pause.add_argument("name", metavar="NAME")
    add_json_flag(pause)
    pause.set_defaults(handler=pause_runner, paused=True)

    resume = actions.add_parser(
        "resume",
        parents=[common],
        help="offer a paused runner work again",
        description="Resume runner NAME: a runner waiting for work gets the best pending job at "
        "once, or waits for the next one.",
        epilog=epilog(
            "  dispatcher runner resume build-01\n  dispatcher runner resume build-01 --json"
        ),
    )
    resume.add_argument("name", metavar="NAME")
    add_json_flag(resume)
    resume.set_defaults(handler=pause_runner, paused=False)


def add_runner(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings) as client:
        token = admin.add_runner(
            client, Keys(settings.namespace), args.name, args.specs, ephemeral=args.ephemeral
        )
    if args.json:
        print_json(
            {"name": args.name, "token": token, "specs": args.specs, "ephemeral": args.ephemeral}
        )
    else:
        kind = ", ephemeral: one job" if args.ephemeral else ""
        print(f"runner {args.name} added (specs: {', '.join(args.specs)}{kind})")
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
            r["state"] + (" (paused)" if r.get("paused") else ""),
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


def rotate_runner(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings) as client:
        token, closed = admin.rotate_runner(client, Keys(settings.namespace), args.name)
    if args.json:
        print_json({"name": args.name, "token": token, "closed": closed})
        return 0
    print(f"runner {args.name}: new token")
    print(f"token: {token}")
    print(
        "The old token is refused from now on"
        + ("; its live connection is being closed (4001)." if closed else ".")
    )
    print("The token is shown only this once; Redis keeps only its SHA-256.")
    return 0


def revoke_runner(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings) as client:
        admin.revoke_runner(client, Keys(settings.namespace), args.name)
    print(f"revoked {args.name}")
    return 0


def pause_runner(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings) as client:
        call = functions.runner_pause(Keys(settings.namespace), args.name, args.paused)
        reply = functions.run_sync(client, call)
    if args.json:
        print_json({"name": args.name, **reply})
        return 0
    verb = "paused" if args.paused else "resumed"
    was = "" if reply["changed"] else " (already)"
    given = f"; given job {reply['job']}" if reply.get("job") else ""
    print(f"runner {args.name} {verb}{was}{given}")
    return 0
