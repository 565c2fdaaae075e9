"""The CLI for humans: ``dispatcher status`` as tables, ``dispatcher top`` (a live terminal view)
and ``dispatcher events [--follow]`` (the tail of ``{ns}:events``). All read-only, from Redis.

``--json`` stays machine output: ``status --json`` is unchanged, ``top --json`` prints one
dashboard snapshot, ``events --json`` prints one JSON object per line (JSON Lines).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dispatcher import dashview
from dispatcher.cli_common import SubParsers, add_json_flag, connect, epilog, print_json
from dispatcher.keys import Keys
from dispatcher.records import rfc3339, text
from dispatcher.settings import Settings

STATE_STYLES = {
    "idle": "green",
    "busy": "yellow",
    "offline": "dim",
    "running": "yellow",
    "claimed": "yellow",
    "pending": "cyan",
    "completed": "green",
    "processed": "green",
    "failed": "red",
    "canceled": "red",
}
TOP_ROWS = 15  # rows per table in `top`
BLOCK_MS = 1000  # `events --follow`: XREAD BLOCK per wait


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    top = subparsers.add_parser(
        "top",
        parents=[common],
        help="a live terminal view of the namespace (refreshed every second)",
        description="Queues per spec, pods, runners, jobs in flight and recent events, read from "
        "Redis every second until Ctrl-C. --once prints one frame and exits.",
        epilog=epilog("  dispatcher top\n  dispatcher top --once\n  dispatcher top --json"),
    )
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="seconds between frames (1)"
    )
    add_json_flag(top)
    top.set_defaults(handler=show_top)

    events = subparsers.add_parser(
        "events",
        parents=[common],
        help="print the namespace's event stream ({ns}:events); --follow tails it",
        description="The last events of the namespace (job submitted, claimed, running, "
        "completed, failed, canceled, reaped; runners added and revoked), oldest first. "
        "--follow then prints new events as they come, until Ctrl-C.",
        epilog=epilog(
            "  dispatcher events\n  dispatcher events --follow\n"
            "  dispatcher events --follow --json | jq .event"
        ),
    )
    events.add_argument("--follow", "-f", action="store_true", help="print new events as they come")
    events.add_argument("--count", type=int, default=20, metavar="N", help="last N events (20)")
    add_json_flag(events)
    events.set_defaults(handler=show_events)


# -- status ---------------------------------------------------------------------------------------


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", expand=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _styled(value: str) -> Text:
    return Text(value, style=STATE_STYLES.get(value, ""))


def status_tables(s: dict[str, Any]) -> RenderableType:
    """``dispatcher status`` (the ``Client.status()`` snapshot) as tables."""
    runners, res = s["runners"], s["results"]
    overview = _table(f"namespace {s['namespace']} at {s['time']}", "figure", "value")
    pods = f"{len(s['pods'])}" + (f": {', '.join(s['pods'])}" if s["pods"] else "")
    overview.add_row("pods live", pods)
    overview.add_row(
        "runners",
        f"{runners['total']} ({runners['idle']} idle, {runners['busy']} busy, "
        f"{runners['offline']} offline)",
    )
    overview.add_row("jobs in flight", f"{s['leases']} claimed or running")
    overview.add_row("results outbox", f"{res.get('outbox', 0)} ({res.get('outbox_due', 0)} due)")
    overview.add_row(
        "rq batches", f"{res['queued']} queued, {res['retrying']} retrying, {res['failed']} failed"
    )
    parts: list[RenderableType] = [overview]
    specs = _table("queues per spec", "spec", "pending", "idle runners")
    for spec, row in s["specs"].items():
        specs.add_row(spec, str(row["pending"]), str(row["idle_runners"]))
    parts.append(specs)
    if s["counters"]:
        counters = _table("jobs by outcome", "outcome", "count")
        for name, value in s["counters"].items():
            counters.add_row(_styled(name), str(value))
        parts.append(counters)
    return Group(*parts)


def print_status(snapshot: dict[str, Any]) -> None:
    Console(highlight=False).print(status_tables(snapshot))


# -- top ------------------------------------------------------------------------------------------


def read_dashboard(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """The dashboard's snapshot (``dispatcher.dashview``) on a sync client."""
    plan = dashview.dashboard_plan(keys)
    batch: Sequence[tuple[Any, ...]] = next(plan)
    while True:
        pipe = client.pipeline(transaction=False)
        for command in batch:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        replies = pipe.execute() if batch else []
        try:
            batch = plan.send(replies)
        except StopIteration as done:
            return dict(done.value)


def _num(value: Any) -> str:
    return "" if value is None else f"{float(value):.1f}"


def top_view(s: dict[str, Any]) -> RenderableType:
    """One frame of ``dispatcher top`` (pure)."""
    st = s["runner_states"]
    head = Text.assemble(
        (f"dispatcher {s['namespace']}", "bold"),
        f"  {s['time']}  pods {len(s['pods'])}  runners {s['runners_registered']}: ",
        (f"{st['idle']} idle", "green"),
        ", ",
        (f"{st['busy']} busy", "yellow"),
        f", {st['offline']} offline  in flight {s['leases']}  "
        f"results backlog {s['results']['outbox']}",
    )
    specs = _table("queues", "spec", "pending", "oldest (s)", "waiting runners")
    for spec, row in s["specs"].items():
        specs.add_row(spec, str(row["pending"]), _num(row["oldest_age"]), str(row["idle_runners"]))
    runners = _table("runners", "runner", "state", "specs", "pod", "job", "for (s)")
    for r in s["runners"][:TOP_ROWS]:
        runners.add_row(
            r["name"],
            _styled(r["state"]),
            ", ".join(r["specs"]),
            r["pod"][:12],
            r["job"][:8],
            _num(r["for_seconds"]),
        )
    jobs = _table("jobs in flight and recent", "job", "spec", "status", "runner", "for (s)")
    for j in [*s["in_flight"], *s["recent"]][:TOP_ROWS]:
        jobs.add_row(j["id"][:8], j["spec"], _styled(j["status"]), j["runner"], _num(j["seconds"]))
    events = _table("events", "time", "event", "job", "details")
    for e in s["events"][:TOP_ROWS]:
        events.add_row(*_event_cells(e))
    return Group(head, specs, runners, jobs, events)


def show_top(args: argparse.Namespace, settings: Settings) -> int:
    keys = Keys(settings.namespace)
    with connect(settings) as client:
        if args.json:
            print_json(read_dashboard(client, keys))
            return 0
        console = Console(highlight=False)
        if args.once:
            console.print(top_view(read_dashboard(client, keys)))
            return 0
        try:
            with Live(top_view(read_dashboard(client, keys)), console=console) as live:
                while True:
                    time.sleep(max(0.1, args.interval))
                    live.update(top_view(read_dashboard(client, keys)))
        except KeyboardInterrupt:
            return 0


# -- events ---------------------------------------------------------------------------------------


def _event(entry_id: Any, fields: Any) -> dict[str, str]:
    event = {str(text(k)): str(text(v)) for k, v in dict(fields).items()}
    event["id"] = str(text(entry_id))
    return event


def _event_cells(e: dict[str, str]) -> tuple[str, str, str, str]:
    rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("event", "job", "ts", "id"))
    ts = e.get("ts") or e["id"].split("-", 1)[0]
    return ((rfc3339(ts) or "")[11:23], e.get("event", ""), e.get("job", ""), rest)


def event_line(e: dict[str, str]) -> str:
    when, name, job, rest = _event_cells(e)
    return " ".join(part for part in (when, f"{name:<12}", job, rest) if part)


def follow(client: redis.Redis, key: str, after: str) -> Iterator[dict[str, str]]:
    """Events after ``after`` (an entry id), as they come (XREAD BLOCK), forever."""
    while True:
        reply: Any = client.xread({key: after}, count=500, block=BLOCK_MS)
        for _stream, rows in reply or []:
            for entry_id, fields in rows:
                event = _event(entry_id, fields)
                after = event["id"]
                yield event


def show_events(args: argparse.Namespace, settings: Settings) -> int:
    keys = Keys(settings.namespace)

    def emit(event: dict[str, str]) -> None:
        print(json.dumps(event, ensure_ascii=False) if args.json else event_line(event), flush=True)

    with connect(settings) as client:
        tail: Any = client.xrevrange(keys.events, "+", "-", count=max(0, args.count))
        last = "0-0"
        for entry_id, fields in reversed(tail or []):
            event = _event(entry_id, fields)
            last = event["id"]
            emit(event)
        if not tail:  # nothing yet: follow from the newest entry (none) on
            newest: Any = client.xrevrange(keys.events, "+", "-", count=1)
            last = str(text(newest[0][0])) if newest else "0-0"
        if not args.follow:
            return 0
        try:
            for event in follow(client, keys.events, last):
                emit(event)
        except KeyboardInterrupt:
            return 0
    return 0
