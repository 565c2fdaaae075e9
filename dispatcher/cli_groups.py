"""`dispatcher group set | list`: concurrency groups (per-organisation limits)."""

from __future__ import annotations

import argparse
from typing import Any

from dispatcher import functions, groups
from dispatcher.cli_common import SubParsers, add_json_flag, connect, epilog, print_json
from dispatcher.errors import InvalidInput
from dispatcher.keys import Keys
from dispatcher.settings import Settings

LIMIT_NOTE = """\
At most LIMIT jobs of the group are claimed or running at once, across every pod. A job names its
group at submit (dispatcher submit --group NAME). Lowering a limit cancels nothing; raising it
hands waiting jobs to idle runners at once. --limit 0 holds every job of the group; --unlimited
removes the group's own limit (then DISPATCHER_GROUP_DEFAULT_LIMIT applies, if the pods set one)."""


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    group = subparsers.add_parser(
        "group",
        parents=[common],
        help="concurrency groups: limits per organisation",
        description="Set and list the limits of concurrency groups.",
        epilog=epilog(
            "  dispatcher group set org-42 --limit 2\n  dispatcher group list --json",
            notes=LIMIT_NOTE,
        ),
    )
    actions = group.add_subparsers(dest="group_action", metavar="ACTION", required=True)

    setter = actions.add_parser(
        "set",
        parents=[common],
        help="set a group's limit",
        description="Limit group NAME to LIMIT jobs claimed or running at once.",
        epilog=epilog(
            "  dispatcher group set org-42 --limit 2\n"
            "  dispatcher group set org-42 --unlimited --json",
            notes=LIMIT_NOTE,
        ),
    )
    setter.add_argument("name", metavar="NAME")
    which = setter.add_mutually_exclusive_group(required=True)
    which.add_argument("--limit", type=int, help="jobs claimed or running at once (>= 0)")
    which.add_argument("--unlimited", action="store_true", help="remove the group's own limit")
    add_json_flag(setter)
    setter.set_defaults(handler=set_group)

    listing = actions.add_parser(
        "list",
        parents=[common],
        help="list groups",
        description="Every group: its limit, jobs in flight (claimed or running) and pending.",
        epilog=epilog("  dispatcher group list\n  dispatcher group list --json"),
    )
    add_json_flag(listing)
    listing.set_defaults(handler=list_groups)


def set_group(args: argparse.Namespace, settings: Settings) -> int:
    limit = None if args.unlimited else args.limit
    try:
        call = groups.set_limit_call(Keys(settings.namespace), args.name, limit)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(str(exc)) from None
    with connect(settings) as client:
        reply = functions.run_sync(client, call)
    if args.json:
        print_json(reply)
        return 0
    shown = "unlimited" if reply["limit"] is None else str(reply["limit"])
    print(
        f"group {reply['group']}: limit {shown}, {reply['inflight']} in flight"
        + (f", {reply['released']} released now" if reply["released"] else "")
    )
    return 0


def list_groups(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings) as client:
        rows = groups.list_groups(client, Keys(settings.namespace))
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no groups")
        return 0
    print_table(rows)
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("GROUP", "LIMIT", "IN FLIGHT", "PENDING")
    cells = [header] + [
        (
            r["group"],
            "-" if r["limit"] is None else str(r["limit"]),
            str(r["inflight"]),
            str(r["pending"]),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
