"""`dispatcher usage`: runner-seconds and final jobs per UTC day, by spec, group or runner."""

from __future__ import annotations

import argparse
from typing import Any

from dispatcher.cli_common import SubParsers, add_json_flag, epilog, print_json
from dispatcher.client import Client
from dispatcher.settings import Settings
from dispatcher.usage import BY, DEFAULT_SPAN_DAYS, UsageQuery

NOTES = f"""\
Running time is finished - started of a job's final attempt (0 s, still one job, when that
attempt never started: canceled while pending or claimed). A job is metered once, on the UTC day
it finished, when a result writer records it; jobs in flight or not yet recorded are not in it.
Every job counts under its spec, its group and its runner ('(none)' without one), so the totals
agree whichever --by is asked for. Days are kept DISPATCHER_USAGE_RETENTION_DAYS (400) after they
end. Without --since: the {DEFAULT_SPAN_DAYS} days up to --until."""


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "usage",
        parents=[common],
        help="runner-seconds and jobs per day, by spec, group or runner",
        description="Usage metering: the runner-seconds and the number of final jobs of each "
        "UTC day from --since to --until, grouped by spec, group or runner, and their totals.",
        epilog=epilog(
            "  dispatcher usage\n"
            "  dispatcher usage --since 2026-11-01 --until 2026-11-30 --by group\n"
            "  dispatcher usage --since yesterday --by runner --json",
            notes=NOTES,
        ),
    )
    parser.add_argument(
        "--since", metavar="DATE", help="first UTC day: YYYY-MM-DD, today or yesterday"
    )
    parser.add_argument("--until", metavar="DATE", help="last UTC day, included (default today)")
    parser.add_argument("--by", choices=BY, default="spec", help="group the figures (spec)")
    add_json_flag(parser)
    parser.set_defaults(handler=show_usage)


def show_usage(args: argparse.Namespace, settings: Settings) -> int:
    query = UsageQuery.build(args.since, args.until, args.by)  # refused before connecting
    with Client(settings) as client:
        report = client.usage(since=query.since, until=query.until, by=query.by)
    if args.json:
        print_json(report)
    else:
        print(usage_table(report))
    return 0


def _name(row: dict[str, Any]) -> str:
    return str(row["name"]) or "(none)"


def usage_table(report: dict[str, Any]) -> str:
    """The report as aligned text: one line per day and name, then the totals."""
    span = f"from {report['since']} to {report['until']} (UTC days)"
    if not report["days"]:
        return f"no usage {span}"
    header = ("DAY", report["by"].upper(), "RUNNER-SECONDS", "JOBS")
    rows = [header]
    for day in report["days"]:
        rows += [
            (day["day"], _name(r), f"{r['runner_seconds']:.3f}", str(r["jobs"]))
            for r in day["usage"]
        ]
    rows += [
        ("total", _name(r), f"{r['runner_seconds']:.3f}", str(r["jobs"])) for r in report["totals"]
    ]
    rows.append(("total", "(all)", f"{report['runner_seconds']:.3f}", str(report["jobs"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"usage by {report['by']} {span}"]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [row[2].rjust(widths[2]), row[3].rjust(widths[3])]
        lines.append("  ".join(cells))
    return "\n".join(lines)
