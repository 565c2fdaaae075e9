"""What concurrency groups cost: submit → `job` latency and Redis work per match with 1,000
saturated groups at the head of the queue, against no groups (issue 12).

``python -m bench.groups [--groups 1000] [--backlog 5] [--runners 20] [--jobs 600] [--rate 50]
[--rounds 2]``

Everything runs on a private ``redis-server`` (so its statistics count only this run).

1. Work per call (``bench.groups_work``): ``ready``, ``submit`` and ``finish`` straight through
   the functions, without groups and with ``--groups`` groups each at its limit of 1 holding
   ``--backlog`` pending jobs of a higher priority than the rest (the saturated head of the
   queue); Redis commands and FCALL µs per call. Repeated with a tenth of the groups: equal
   command counts show the work does not grow with the number of groups.
2. End to end, in ``--rounds`` pairs of phases (``none`` and ``groups``, the order alternating
   from round to round), each with one pod (``dispatcher serve``) and ``--runners`` simulated
   runners (``bench.sim``): this process submits ``--jobs`` jobs at ``--rate`` jobs/s, each
   carrying its submit time, and the runners record when each `job` arrived. In ``groups``
   the saturated groups are set up first (their holders are runners of a pod that is not
   there, so the jobs stay claimed), and each measured job names one of ``--groups`` other
   groups with a limit of 2, round robin.

Results: ``bench/results/groups-<run id>.json`` and Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio

from bench import common, deps, groups_work, metrics
from bench.cli import start_private_redis
from bench.harness import Harness
from bench.procs import Procs
from dispatcher import functions, redisconn
from dispatcher.keys import Keys

RESULTS = Path(__file__).parent / "results"
POD_ENV = {"DISPATCHER_START_TIMEOUT": "3600"}  # the holders' claims must not expire mid-run


async def submit_at_rate(
    client: redis.asyncio.Redis, keys: Keys, jobs: int, rate: float, groups: int
) -> float:
    """Submit ``jobs`` jobs open loop at ``rate``/s (payload ``t0`` = submit time); returns the
    worst lateness behind the schedule, s."""
    start, worst = time.monotonic(), 0.0
    for i in range(jobs):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        worst = max(worst, time.monotonic() - due)
        payload = json.dumps({"t0": time.time(), "command": ["true"]})
        group = f"room{i % groups}" if groups else ""
        call = functions.submit(keys, "", common.SPEC, payload, 0, 600, 1, group=group)
        await functions.run(client, call)
    return worst


def prepare_groups(redis_url: str, ns: str, groups: int, backlog: int) -> None:
    client: Any = redisconn.sync_client(redis_url, decode_responses=True)
    keys = Keys(ns)
    try:
        functions.run_sync(client, functions.tick(keys, groups_work.POD, 3_600_000))
        groups_work.saturate(client, keys, groups, backlog)
        for g in range(groups):
            functions.run_sync(client, functions.group_set(keys, f"room{g}", 2))
    finally:
        client.close()


async def phase(h: Harness, kind: str, args: argparse.Namespace, n: int) -> list[float]:
    """One phase; the submit → `job` latencies (s) of its jobs."""
    ns = h.ns(f"{kind}{n}")
    keys = Keys(ns)
    (pod,) = await h.start_pods(ns, 1, extra_env=POD_ENV)
    if kind == "groups":
        await asyncio.to_thread(prepare_groups, h.redis_url, ns, args.groups, args.backlog)
    runners = await h.register(ns, args.runners, [pod])
    sims = await h.start_sims(runners, args.runners, poll_timeout=30)
    await h.wait_idle(ns, args.runners, "pubsub")
    before = await h.stats(ns)
    groups = args.groups if kind == "groups" else 0
    lag = await submit_at_rate(h.client, keys, args.jobs, args.rate, groups)
    target = before.get("completed", 0) + args.jobs
    done = await h.wait_counter(ns, "completed", target, 120)
    results = await h.stop_sims(sims)
    await h.stop([pod])
    await h.cleanup(ns)
    if not done:
        raise RuntimeError(f"{ns}: not every job completed within 120 s")
    h.log(f"{ns}: producer max lag {lag:.4f} s")
    return [s.latency for r in results for s in r.jobs if s.latency is not None]


async def bench(args: argparse.Namespace, work_dir: Path, procs: Procs) -> dict[str, Any]:
    redis_url = await start_private_redis(procs)
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    run_ns = f"groups-{secrets.token_hex(3)}"
    h = Harness(redis_url, run_ns, work_dir, procs, client, compression=False)
    work = {}
    for size in (args.groups, max(1, args.groups // 10)):
        work[str(size)] = await asyncio.to_thread(
            groups_work.run_all, redis_url, f"{run_ns}-w{size}", size, args.backlog, args.calls
        )
    latencies: dict[str, list[float]] = {"none": [], "groups": []}
    for n in range(args.rounds):  # alternating order: drift on a shared machine hits both alike
        for kind in ("none", "groups") if n % 2 == 0 else ("groups", "none"):
            latencies[kind] += await phase(h, kind, args, n)
    end_to_end = {kind: {"latency_ms": metrics.summary_ms(v)} for kind, v in latencies.items()}
    await client.aclose()
    return {"args": common.recorded_args(args), "work_per_call": work, "end_to_end": end_to_end}


def ratios(data: dict[str, Any]) -> dict[str, Any]:
    e2e = data["end_to_end"]
    none, grouped = e2e["none"]["latency_ms"], e2e["groups"]["latency_ms"]
    return {q: round(grouped[q] / none[q], 3) for q in ("p50", "p90", "p99") if none.get(q)}


def markdown(data: dict[str, Any]) -> str:
    size = str(data["args"]["groups"])
    rows = [
        f"Redis work per call ({size} saturated groups vs none; commands run by the function, "
        "FCALL µs):",
        "",
        "| call | commands, none | commands, groups | µs, none | µs, groups |",
        "|---|---|---|---|---|",
    ]
    for op, kinds in data["work_per_call"][size].items():
        n, g = kinds["none"], kinds["groups"]
        rows.append(
            f"| {op} | {n['commands_per_call']} | {g['commands_per_call']} | "
            f"{n['usec_per_call']} | {g['usec_per_call']} |"
        )
    small = min(data["work_per_call"], key=int)
    same = all(
        data["work_per_call"][small][op]["groups"]["commands_per_call"]
        == data["work_per_call"][size][op]["groups"]["commands_per_call"]
        for op in data["work_per_call"][size]
    )
    rows.append(f"\nsame command counts with {small} groups: {same}")
    rows += ["", "| submit → job | jobs | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|"]
    for kind, phase_data in data["end_to_end"].items():
        s = phase_data["latency_ms"]
        rows.append(
            f"| {kind} | {s.get('count')} | {s.get('p50')} | {s.get('p90')} | {s.get('p99')} |"
        )
    rows.append(f"\ngroups ÷ none: {data['ratio_groups_over_none']}")
    return "\n".join(rows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.groups", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--groups", type=int, default=1000, help="saturated groups (1000)")
    parser.add_argument("--backlog", type=int, default=5, help="pending jobs per group (5)")
    parser.add_argument("--runners", type=int, default=20, help="simulated runners (20)")
    parser.add_argument("--jobs", type=int, default=600, help="measured jobs per phase (600)")
    parser.add_argument("--rate", type=float, default=50.0, help="jobs per second (50)")
    parser.add_argument("--calls", type=int, default=200, help="calls per work measure (200)")
    parser.add_argument("--rounds", type=int, default=2, help="none+groups phase pairs (2)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for name in ("groups", "runners", "jobs", "calls", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.backlog < 0 or not 0 < args.rate <= 10_000:
        parser.error("--backlog must be >= 0 and --rate from 0 to 10000")
    return args


async def amain(args: argparse.Namespace) -> int:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    work_dir = args.results_dir / "tmp" / f"groups-{run_id}"
    work_dir.mkdir(parents=True, exist_ok=True)
    procs = Procs(work_dir)
    try:
        data = await bench(args, work_dir, procs)
    finally:
        await procs.stop_all()
    data["ratio_groups_over_none"] = ratios(data)
    data["run_id"] = run_id
    data["command"] = shlex.join(["python", "-m", "bench.groups", *sys.argv[1:]])
    data["machine_cpus"] = deps.psutil().cpu_count()
    data["load_average"] = deps.psutil().getloadavg()
    out = args.results_dir / f"groups-{run_id}.json"
    out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(markdown(data))
    print(f"\nresults: {out}")
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(asyncio.run(amain(parse(argv))))


if __name__ == "__main__":
    main()
