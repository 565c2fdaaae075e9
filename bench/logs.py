"""Does a job streaming its output at full speed slow other runners' dispatch? (issue 12)

``python -m bench.logs [--runners 20] [--rate 20] [--window 8] [--rounds 3] [--megabytes 10]
[--log-rate BYTES_PER_S]``

One pod (``dispatcher serve``) on a private ``redis-server``; ``--runners`` simulated runners
(``bench.sim``) of the bench spec take every job at once; a producer (``bench.producer``) submits
``--rate`` jobs/s to them for the whole run. Windows of ``--window`` s alternate, ``quiet`` then
``noisy``, ``--rounds`` times: during a noisy window one more runner on the same pod (this
process, a raw WebSocket) runs jobs of its own spec back to back, each writing ``--megabytes`` MB
as 16 KiB `log` chunks as fast as its socket takes them (what the reference runner sends for a
job printing at full speed), then `completed`. The other runners' submit→`job` latencies are
split by the window their submit fell in (a 1 s gap after each window is left out, so a noisy
job that ends late does not leak into a quiet window), giving p50/p99 quiet vs noisy in one run.
Also per window kind: the pod's and Redis's CPU seconds, and the bytes the noisy runner sent.
``--log-rate`` sets the pod's DISPATCHER_LOG_RATE (0: unlimited, to see what the limit buys).
``--megabytes 0`` is the control: the "noisy" windows run nothing, so their ratio to the quiet
ones is this machine's noise (an A/A comparison), to read the other ratios against.

Results: ``bench/results/logs-<run id>.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio
from websockets.asyncio.client import connect

from bench import common, deps, metrics
from bench.cli import start_private_redis
from bench.harness import Harness, Pod
from bench.procs import Procs
from dispatcher import admin, functions, redisconn
from dispatcher.keys import Keys

RESULTS = Path(__file__).parent / "results"
NOISY = "noisy"
CHUNK = 16 * 1024
GAP = 1.0


@dataclass
class Window:
    kind: str
    start: float
    end: float
    pod_cpu: float = 0.0
    redis_cpu: float = 0.0
    noisy_bytes: int = 0
    noisy_jobs: int = 0


@dataclass
class Noisy:
    """The noisy runner: one connection, one job at a time."""

    pod: Pod
    keys: Keys
    client: redis.asyncio.Redis
    token: str
    megabytes: float
    sent: int = 0
    jobs: list[str] = field(default_factory=list)

    async def run_until(self, end: float) -> None:
        chunk = "x" * CHUNK
        per_job = int(self.megabytes * 1_000_000) // CHUNK
        async with connect(
            self.pod.ws_url(NOISY),
            additional_headers={"Authorization": f"Bearer {self.token}"},
            compression=None,
            max_size=None,
        ) as ws:
            while time.time() < end:
                call = functions.submit(self.keys, "", NOISY, "{}", 0, 600, 1)
                job_id = await functions.run(self.client, call)
                await ws.send(json.dumps({"event": "ready", "poll_timeout": 30}))
                job = json.loads(await ws.recv())
                assert job["event"] == "job" and job["job"] == job_id, job
                ids = {"job": job_id, "attempt": job["attempt"]}
                await ws.send(json.dumps({"event": "running", **ids}))
                assert json.loads(await ws.recv())["of"] == "running"
                for seq in range(per_job):
                    frame = {"event": "log", **ids, "seq": seq, "stream": "stdout", "data": chunk}
                    await ws.send(json.dumps(frame))
                    self.sent += CHUNK
                await ws.send(json.dumps({"event": "completed", **ids, "exit_code": 0}))
                assert json.loads(await ws.recv())["of"] == "completed"
                self.jobs.append(job_id)


async def redis_cpu(client: redis.asyncio.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def run_window(
    kind: str, seconds: float, pod: Pod, client: redis.asyncio.Redis, noisy: Noisy
) -> Window:
    start = time.time()
    cpu0, rcpu0 = metrics.cpu_seconds(pod.child.pid), await redis_cpu(client)
    sent0, jobs0 = noisy.sent, len(noisy.jobs)
    if kind == NOISY and noisy.megabytes > 0:
        await noisy.run_until(start + seconds)  # the last job may run past the window: measured
    else:
        await asyncio.sleep(seconds)
    end = time.time()
    window = Window(kind, start, end)
    window.pod_cpu = (metrics.cpu_seconds(pod.child.pid) or 0.0) - (cpu0 or 0.0)
    window.redis_cpu = await redis_cpu(client) - rcpu0
    window.noisy_bytes, window.noisy_jobs = noisy.sent - sent0, len(noisy.jobs) - jobs0
    await asyncio.sleep(GAP)
    return window


def split_latencies(jobs: list[common.JobSeen], windows: list[Window]) -> dict[str, list[float]]:
    """Latencies by the kind of window the job's submit (arrival - latency) fell in."""
    out: dict[str, list[float]] = {"quiet": [], NOISY: []}
    for seen in jobs:
        if seen.latency is None:
            continue
        t0 = seen.arrived - seen.latency
        for w in windows:
            if w.start <= t0 < w.end:
                out[w.kind].append(seen.latency)
                break
    return out


async def bench(args: argparse.Namespace, work_dir: Path, procs: Procs) -> dict[str, Any]:
    redis_url = await start_private_redis(procs)
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    run_ns = f"logs-{secrets.token_hex(3)}"
    h = Harness(redis_url, run_ns, work_dir, procs, client, compression=False)
    ns = h.ns("a")
    keys = Keys(ns)
    rate = {} if args.log_rate is None else {"DISPATCHER_LOG_RATE": str(args.log_rate)}
    (pod,) = await h.start_pods(ns, 1, extra_env=rate)
    runners = await h.register(ns, args.runners, [pod])
    sync = redisconn.sync_client(redis_url)
    token = admin.add_runner(sync, keys, NOISY, [NOISY])
    sync.close()
    sims = await h.start_sims(runners, args.runners, poll_timeout=30)
    await h.wait_idle(ns, args.runners, "pubsub")
    total = args.rounds * 2 * (args.window + GAP) + 2 * args.window
    producer = await h.start_producer(ns, "rate", rate=args.rate, duration=total)
    await producer.command("go")
    noisy = Noisy(pod, keys, client, token, args.megabytes)
    windows = []
    await asyncio.sleep(GAP)
    for _ in range(args.rounds):
        for kind in ("quiet", NOISY):
            windows.append(await run_window(kind, args.window, pod, client, noisy))
    await h.finish_producer(producer, total + 60)
    results = await h.stop_sims(sims)
    jobs = [seen for r in results for seen in r.jobs]
    stored = [int(await client.hget(keys.job(j), "log_bytes") or 0) for j in noisy.jobs]
    await h.stop([pod])
    await client.aclose()
    return report(args, windows, split_latencies(jobs, windows), stored)


def report(
    args: argparse.Namespace,
    windows: list[Window],
    latencies: dict[str, list[float]],
    stored: list[int],
) -> dict[str, Any]:
    summary = {kind: metrics.summary_ms(values) for kind, values in latencies.items()}
    per_kind: dict[str, dict[str, float]] = {}
    for kind in ("quiet", NOISY):
        ws = [w for w in windows if w.kind == kind]
        seconds = sum(w.end - w.start for w in ws)
        per_kind[kind] = {
            "seconds": round(seconds, 3),
            "pod_cpu_per_s": round(sum(w.pod_cpu for w in ws) / seconds, 4),
            "redis_cpu_per_s": round(sum(w.redis_cpu for w in ws) / seconds, 4),
            "noisy_mb_per_s": round(sum(w.noisy_bytes for w in ws) / seconds / 1e6, 2),
            "noisy_jobs": sum(w.noisy_jobs for w in ws),
        }
    quiet, loud = summary["quiet"], summary[NOISY]
    ratios = {q: round(loud[q] / quiet[q], 3) for q in ("p50", "p99") if quiet.get(q)}
    return {
        "args": common.recorded_args(args),
        "latency_ms": summary,
        "ratio_noisy_over_quiet": ratios,
        "per_window_kind": per_kind,
        "noisy_log_bytes_stored_per_job": sorted(set(stored)),
        "windows": [w.__dict__ for w in windows],
    }


def markdown(data: dict[str, Any]) -> str:
    lat, kinds, ratio = data["latency_ms"], data["per_window_kind"], data["ratio_noisy_over_quiet"]
    rows = [
        "| windows | jobs | p50 ms | p99 ms | pod CPU s/s | Redis CPU s/s | noisy MB/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("quiet", NOISY):
        s, k = lat[kind], kinds[kind]
        rows.append(
            f"| {kind} | {s.get('count', 0)} | {s.get('p50')} | {s.get('p99')} | "
            f"{k['pod_cpu_per_s']} | {k['redis_cpu_per_s']} | {k['noisy_mb_per_s']} |"
        )
    rows.append(f"\nnoisy ÷ quiet: p50 {ratio.get('p50')}, p99 {ratio.get('p99')}")
    return "\n".join(rows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.logs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runners", type=int, default=20, help="other runners (20)")
    parser.add_argument("--rate", type=float, default=20.0, help="their jobs per second (20)")
    parser.add_argument("--window", type=float, default=8.0, help="seconds per window (8)")
    parser.add_argument("--rounds", type=int, default=3, help="quiet+noisy pairs (3)")
    parser.add_argument("--megabytes", type=float, default=10.0, help="output per noisy job (10)")
    parser.add_argument(
        "--log-rate", type=int, default=None, help="DISPATCHER_LOG_RATE of the pod (its default)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    work_dir = args.results_dir / "tmp" / f"logs-{run_id}"
    work_dir.mkdir(parents=True, exist_ok=True)
    procs = Procs(work_dir)
    try:
        data = await bench(args, work_dir, procs)
    finally:
        await procs.stop_all()
    data["run_id"] = run_id
    data["command"] = shlex.join(["python", "-m", "bench.logs", *sys.argv[1:]])
    data["machine_cpus"] = deps.psutil().cpu_count()
    out = args.results_dir / f"logs-{run_id}.json"
    out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(markdown(data))
    print(f"\nresults: {out}")
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(asyncio.run(amain(parse(argv))))


if __name__ == "__main__":
    main()
