"""The five scenarios of issue 4 (and the sizes of the results scenario of issue 8,
``bench/resultspath.py``). Each returns a JSON-ready dict of its figures.

Every scenario runs in its own namespace (``<run>-<scenario>[-<mode>]``), starts its own
processes, stops them in reverse order and deletes the namespace's keys, even when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import deps, metrics
from bench.common import SPEC, JobSeen, ProducerResult, SimResult
from bench.harness import Harness, Pod, Sims
from bench.procs import Child
from dispatcher.keys import Keys

MODES = ("pubsub", "poll")


@dataclass(frozen=True)
class Size:
    """How big one scenario runs."""

    runners: int
    pods: int = 2
    duration: float = 20.0
    rate: float = 100.0
    writers: int = 1
    producers: int = 1
    per_process: int = 1000
    kills: int = 3
    max_backlog: int = 2000
    poll_timeout: int = 30
    connect_concurrency: int = 100
    settle: float = 2.0
    drain: int = 0  # results scenario: results waiting when the writers start
    kill_results: int = 0  # results scenario: results waiting in the kill -9 phase
    visibility: float = 0.0  # results scenario: DISPATCHER_OUTBOX_VISIBILITY (0 = default)


FULL: dict[str, Size] = {
    "latency": Size(runners=1000, pods=2, duration=20, rate=100, writers=1, per_process=500),
    "throughput": Size(
        runners=200, pods=2, duration=20, writers=2, producers=1, per_process=100, max_backlog=2000
    ),
    "idle": Size(runners=2000, pods=2, duration=60, writers=0, per_process=1000),
    "connections": Size(
        runners=10_000, pods=1, writers=0, per_process=2000, connect_concurrency=50, settle=3.0
    ),
    "lostbell": Size(
        runners=200, pods=2, duration=12, rate=50, writers=1, kills=3, per_process=200
    ),
    "results": Size(
        runners=200,
        pods=2,
        duration=60,
        writers=2,
        producers=1,
        per_process=100,
        max_backlog=2000,
        drain=50_000,
        kill_results=20_000,
    ),
}

QUICK: dict[str, Size] = {
    "latency": Size(runners=6, pods=2, duration=1.5, rate=20, per_process=3, settle=0.2),
    "throughput": Size(
        runners=4, pods=1, duration=1.5, writers=1, per_process=4, max_backlog=50, settle=0.2
    ),
    "idle": Size(runners=6, pods=2, duration=1.5, writers=0, per_process=6, settle=0.2),
    "connections": Size(runners=20, pods=1, writers=0, per_process=10, settle=0.5),
    "lostbell": Size(runners=4, pods=2, duration=3.0, rate=20, kills=1, per_process=4, settle=0.2),
    "results": Size(
        runners=4,
        pods=2,
        duration=1.5,
        writers=2,
        per_process=4,
        max_backlog=50,
        settle=0.2,
        drain=400,
        kill_results=5000,
        visibility=2.0,
    ),
}


@dataclass
class Scope:
    """What one scenario started, stopped in reverse order at the end."""

    harness: Harness
    children: list[Child] = field(default_factory=list)

    def add(self, items: Sequence[Child | Pod] | Sims | Child) -> None:
        if isinstance(items, Sims):
            self.children.extend(items.children)
        elif isinstance(items, Child):
            self.children.append(items)
        else:
            for item in items:
                self.children.append(item.child if isinstance(item, Pod) else item)


@contextlib.asynccontextmanager
async def scope(h: Harness, ns: str) -> AsyncIterator[Scope]:
    s = Scope(h)
    try:
        yield s
    finally:
        await h.procs.stop_many(list(reversed(s.children)))
        await h.cleanup(ns)


def pids(prefix: str, children: Sequence[Child | Pod]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, item in enumerate(children):
        child: Child = item.child if isinstance(item, Pod) else item
        out[f"{prefix}{i}"] = child.pid
    return out


async def redis_pid(h: Harness) -> dict[str, int]:
    """The Redis server's pid when it runs on this machine (for its CPU %)."""
    psutil_mod = deps.psutil()
    info = await h.client.info("server")
    pid = int(info.get("process_id", 0))
    try:
        name = psutil_mod.Process(pid).name()
    except psutil_mod.Error:
        return {}
    return {"redis": pid} if ("redis" in name or "valkey" in name) else {}


def pod_total(cpu_percent: dict[str, float]) -> float:
    return round(sum(v for k, v in cpu_percent.items() if k.startswith("pod")), 2)


def producer_cpu(result: ProducerResult) -> float:
    return round(100.0 * result.cpu_seconds / max(result.ended - result.started, 1e-9), 2)


def deliveries(submitted: list[tuple[str, float]], results: list[SimResult]) -> dict[str, Any]:
    """Exactly-once accounting of submitted jobs against the `job` frames runners received."""
    t0s = dict(submitted)
    seen: dict[str, list[JobSeen]] = {}
    for result in results:
        for job in result.jobs:
            seen.setdefault(job.job, []).append(job)
    delivered = [job for job in t0s if job in seen]
    latencies = {job: min(j.arrived for j in seen[job]) - t0s[job] for job in delivered}
    return {
        "submitted": len(t0s),
        "delivered": len(delivered),
        "lost": len(t0s) - len(delivered),
        "duplicates": sum(len(v) - 1 for v in seen.values()),
        "unknown": sum(1 for job in seen if job not in t0s),
        "latencies": latencies,
    }


def sim_health(results: list[SimResult], sims: Sims) -> dict[str, Any]:
    closed: dict[str, int] = {}
    for r in results:
        for code, n in r.closed.items():
            closed[code] = closed.get(code, 0) + n
    return {
        "connected": sims.connected,
        "connect_errors": sims.errors,
        "first_connect_error": sims.first_error,
        "server_closed": closed,
        "protocol_errors": sum(r.protocol_errors for r in results),
        "cancels": sum(r.cancels for r in results),
    }


# -- 1. latency ---------------------------------------------------------------------------------


async def latency(h: Harness, size: Size, wake: str) -> dict[str, Any]:
    ns = h.ns(f"latency-{wake}")
    async with scope(h, ns) as s:
        pods = await h.start_pods(ns, size.pods, wake)
        s.add(pods)
        writers = await h.start_writers(ns, size.writers)
        s.add(writers)
        sims = await h.start_sims(
            await h.register(ns, size.runners, pods),
            size.per_process,
            poll_timeout=size.poll_timeout,
        )
        s.add(sims)
        await h.wait_idle(ns, sims.connected, wake)
        await asyncio.sleep(size.settle)
        producer = await h.start_producer(ns, "rate", rate=size.rate, duration=size.duration)
        s.add(producer)
        watched = {
            **pids("pod", pods),
            **pids("writer", writers),
            **pids("sim", sims.children),
            **await redis_pid(h),
        }
        cpu = metrics.CpuWindow.begin(watched, time.time())
        await producer.command("go")
        produced = await h.finish_producer(producer, size.duration + 60)
        cpu_percent = cpu.end(time.time())
        cpu_percent["producer0"] = producer_cpu(produced)
        drained = await h.wait_counter(
            ns, "completed", len(produced.submitted), 10 + 3 * h.poll_interval
        )
        results = await h.stop_sims(sims)
    acc = deliveries(produced.submitted, results)
    lat = acc.pop("latencies")
    ordered = sorted(lat.values())
    return {
        "mode": wake,
        "runners": size.runners,
        "pods": size.pods,
        "rate": size.rate,
        "duration_s": size.duration,
        "poll_interval_s": h.poll_interval if wake == "poll" else None,
        **acc,
        "drained": drained,
        "producer_errors": produced.errors,
        "producer_first_error": produced.first_error,
        "producer_max_lag_ms": round(produced.max_lag * 1000, 3),
        "latency_ms": metrics.summary_ms(ordered),
        "submit_call_ms": metrics.summary_ms(produced.submit_call),
        "pod_cpu_percent_total": pod_total(cpu_percent),
        "cpu_percent": cpu_percent,
        "samples_ms": [round(v * 1000, 3) for v in ordered],
        **sim_health(results, sims),
    }


# -- 2. throughput ------------------------------------------------------------------------------


class Sampler:
    """Runs ``probe`` every ``every`` s until ``stop``.

    Stopped through an event rather than by cancelling the task: redis-py can swallow a
    cancellation that lands inside a command, and the task would then never end.
    """

    def __init__(self, probe: Callable[[], Awaitable[None]], every: float) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(probe, every))

    async def _run(self, probe: Callable[[], Awaitable[None]], every: float) -> None:
        while not self._stop.is_set():
            await probe()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), every)

    async def stop(self) -> None:
        self._stop.set()
        await self._task


async def sample_series(h: Harness, ns: str, out: list[dict[str, float]]) -> None:
    keys = Keys(ns)
    stats = await h.stats(ns)
    out.append(
        {
            "t": time.time(),
            "submitted": stats.get("submitted", 0),
            "dispatched": stats.get("dispatched", 0),
            "completed": stats.get("completed", 0),
            "processed": stats.get("processed", 0),
            "pending": int(await h.client.zcard(keys.pending(SPEC))),
            "results_queue": int(await h.client.llen(f"rq:queue:{keys.results_queue}")),
        }
    )


async def throughput(h: Harness, size: Size) -> dict[str, Any]:
    ns = h.ns("throughput")
    keys = Keys(ns)
    series: list[dict[str, float]] = []
    async with scope(h, ns) as s:
        pods = await h.start_pods(ns, size.pods)
        s.add(pods)
        writers = await h.start_writers(ns, size.writers)
        s.add(writers)
        sims = await h.start_sims(await h.register(ns, size.runners, pods), size.per_process)
        s.add(sims)
        await h.wait_idle(ns, sims.connected, "pubsub")
        await asyncio.sleep(size.settle)
        producers = [
            await h.start_producer(ns, "max", duration=size.duration, max_backlog=size.max_backlog)
            for _ in range(size.producers)
        ]
        s.add(producers)
        watched = {
            **pids("pod", pods),
            **pids("writer", writers),
            **pids("sim", sims.children),
            **await redis_pid(h),
        }
        before = await h.stats(ns)
        t_start = time.time()
        cpu = metrics.CpuWindow.begin(watched, t_start)
        sampler = Sampler(lambda: sample_series(h, ns, series), 0.25 if h.quick else 1.0)
        await asyncio.gather(*(p.command("go") for p in producers))
        produced = [await h.finish_producer(p, size.duration + 60) for p in producers]
        t_end = time.time()
        after = await h.stats(ns)
        cpu_percent = cpu.end(t_end)
        for k, p in enumerate(produced):
            cpu_percent[f"producer{k}"] = producer_cpu(p)
        pending = int(await h.client.zcard(keys.pending(SPEC)))
        results_queue = int(await h.client.llen(f"rq:queue:{keys.results_queue}"))
        await sampler.stop()
        results = await h.stop_sims(sims)
    window = t_end - t_start
    submitted = [item for p in produced for item in p.submitted]
    acc = deliveries(submitted, results)
    acc.pop("latencies")
    acked = sum(1 for r in results for t in r.acks if t_start <= t <= t_end)

    def rate(name: str) -> float:
        return round((after.get(name, 0) - before.get(name, 0)) / window, 1)

    return {
        "runners": size.runners,
        "pods": size.pods,
        "writers": size.writers,
        "producers": size.producers,
        "duration_s": round(window, 3),
        "max_backlog": size.max_backlog,
        "submitted_per_s": rate("submitted"),
        "dispatched_per_s": rate("dispatched"),
        "acknowledged_per_s": round(acked / window, 1),
        "completed_per_s": rate("completed"),
        "processed_per_s": rate("processed"),
        "backlog_pending_at_end": pending,
        "backlog_results_queue_at_end": results_queue,
        "duplicates": acc["duplicates"],
        "unknown": acc["unknown"],
        "delivered": acc["delivered"],
        "submitted": acc["submitted"],
        "producer_errors": sum(p.errors for p in produced),
        "cpu_percent": cpu_percent,
        "series": [
            {k: (round(v - t_start, 3) if k == "t" else v) for k, v in row.items()}
            for row in series
        ],
        **sim_health(results, sims),
    }


# -- 3. idle ------------------------------------------------------------------------------------


async def sample_commands(h: Harness, out: list[dict[str, float]]) -> None:
    snap = await metrics.redis_snapshot(h.client)
    total = sum(n for name, n in snap["calls"].items() if name not in metrics.HARNESS_COMMANDS)
    out.append({"t": time.time(), "commands": total, "fcall": snap["calls"].get("fcall", 0)})


async def idle(h: Harness, size: Size, wake: str) -> dict[str, Any]:
    ns = h.ns(f"idle-{wake}")
    series: list[dict[str, float]] = []
    async with scope(h, ns) as s:
        pods = await h.start_pods(ns, size.pods, wake)
        s.add(pods)
        sims = await h.start_sims(
            await h.register(ns, size.runners, pods),
            size.per_process,
            poll_timeout=size.poll_timeout,
        )
        s.add(sims)
        await h.wait_idle(ns, sims.connected, wake)
        await asyncio.sleep(size.settle)
        ours = await h.pod_redis_ports(pods)
        watched = {**pids("pod", pods), **pids("sim", sims.children), **await redis_pid(h)}
        before = await metrics.redis_snapshot(h.client)
        t0 = time.time()
        cpu = metrics.CpuWindow.begin(watched, t0)
        sampler = Sampler(lambda: sample_commands(h, series), 0.25 if h.quick else 1.0)
        await asyncio.sleep(size.duration)
        t1 = time.time()
        cpu_percent = cpu.end(t1)
        after = await metrics.redis_snapshot(h.client)
        await sampler.stop()
        ours |= await h.pod_redis_ports(pods)
        foreign = await metrics.foreign_activity(h.client, ours, t1 - t0)
        results = await h.stop_sims(sims)
    window = t1 - t0
    renewals = sum(1 for r in results for t in r.no_jobs if t0 <= t <= t1)
    return {
        "mode": wake,
        "runners": size.runners,
        "pods": size.pods,
        "duration_s": round(window, 3),
        "poll_timeout_s": size.poll_timeout,
        "poll_interval_s": h.poll_interval if wake == "poll" else None,
        "redis": metrics.command_delta(before, after, window),
        "pod_cpu_percent_total": pod_total(cpu_percent),
        "cpu_percent": cpu_percent,
        "long_poll_renewals_per_s": round(renewals / window, 2),
        "foreign_clients": foreign,
        "contaminated": bool(foreign),
        "series": [
            {"t": round(r["t"] - t0, 3), "commands": r["commands"], "fcall": r["fcall"]}
            for r in series
        ],
        **sim_health(results, sims),
    }


# -- 4. connections -----------------------------------------------------------------------------


async def sample_pod(pid: int, out: list[dict[str, float]]) -> None:
    out.append(
        {"t": time.time(), "rss": metrics.rss_bytes(pid), "cpu": metrics.cpu_seconds(pid) or 0.0}
    )


async def connections(h: Harness, size: Size) -> dict[str, Any]:
    ns = h.ns("connections")
    series: list[dict[str, float]] = []
    async with scope(h, ns) as s:
        pods = await h.start_pods(ns, 1)
        s.add(pods)
        pid = pods[0].child.pid
        runners = await h.register(ns, size.runners, pods)
        await asyncio.sleep(size.settle)
        rss_before = metrics.rss_bytes(pid)
        sampler = Sampler(lambda: sample_pod(pid, series), 0.25)
        cpu = metrics.CpuWindow.begin({"pod0": pid}, time.time())
        sims = await h.start_sims(
            runners, size.per_process, connect_concurrency=size.connect_concurrency, timeout=600
        )
        s.add(sims)
        await h.wait_idle(ns, sims.connected, "pubsub", timeout=300)
        t_idle = time.time()
        ramp_cpu = cpu.end(t_idle)
        await asyncio.sleep(size.settle)
        rss_after = metrics.rss_bytes(pid)
        await sampler.stop()
        results = await h.stop_sims(sims)
    connected_at = sorted(t for r in results for t in r.connected_at)
    first = min((r.connect_started for r in results), default=t_idle)
    last = connected_at[-1] if connected_at else t_idle
    connected = len(connected_at)
    per_conn = (rss_after - rss_before) / connected if connected else float("nan")
    client_rss = sum(r.rss_bytes for r in results)
    return {
        "runners": size.runners,
        "connected": connected,
        "pods": 1,
        "pod_rss_before_mib": round(rss_before / 2**20, 2),
        "pod_rss_after_mib": round(rss_after / 2**20, 2),
        "rss_per_connection_kib": round(per_conn / 1024, 2),
        "connections_opened_per_s": round(connected / max(last - first, 1e-9), 1),
        "ramp_s": round(last - first, 3),
        "idle_after_s": round(t_idle - first, 3),
        "runners_idle_per_s": round(connected / max(t_idle - first, 1e-9), 1),
        "pod_cpu_percent_during_ramp": ramp_cpu["pod0"],
        "simulator_peak_rss_per_connection_kib": round(client_rss / connected / 1024, 2)
        if connected
        else None,
        "connect_concurrency_per_process": size.connect_concurrency,
        "simulator_processes": len(results),
        "series": [
            {
                "t": round(r["t"] - first, 3),
                "rss_mib": round(r["rss"] / 2**20, 2),
                "cpu_s": round(r["cpu"], 3),
            }
            for r in series
        ],
        "connected_at": [round(t - first, 4) for t in connected_at[:: max(1, connected // 500)]],
        **sim_health(results, sims),
    }


# -- 5. lost doorbell ---------------------------------------------------------------------------


async def lostbell(h: Harness, size: Size) -> dict[str, Any]:
    ns = h.ns("lostbell")
    kills: list[dict[str, float]] = []
    async with scope(h, ns) as s:
        pods = await h.start_pods(ns, size.pods)
        s.add(pods)
        writers = await h.start_writers(ns, size.writers)
        s.add(writers)
        sims = await h.start_sims(await h.register(ns, size.runners, pods), size.per_process)
        s.add(sims)
        await h.wait_idle(ns, sims.connected, "pubsub")
        await asyncio.sleep(size.settle)
        producer = await h.start_producer(ns, "rate", rate=size.rate, duration=size.duration)
        s.add(producer)
        await producer.command("go")
        t_go = time.time()
        for k in range(size.kills):
            at = t_go + (k + 1) * size.duration / (size.kills + 1)
            await asyncio.sleep(max(0.0, at - time.time()))
            ports = await h.pod_redis_ports(pods)  # a rebuilt subscription has a new port
            t_kill = time.time()
            killed = await metrics.kill_pubsub(h.client, ports)
            kills.append({"t": t_kill, "killed": killed})
        produced = await h.finish_producer(producer, size.duration + 60)
        drained = await h.wait_counter(ns, "completed", len(produced.submitted), 20)
        results = await h.stop_sims(sims)
    acc = deliveries(produced.submitted, results)
    lat = acc.pop("latencies")
    t0s = dict(produced.submitted)
    window = 2.0  # a lost doorbell must be recovered well within this

    def disturbed(job: str) -> bool:
        return any(k["t"] - 0.05 <= t0s[job] <= k["t"] + window for k in kills)

    calm = sorted(v for job, v in lat.items() if not disturbed(job))
    hit = sorted(v for job, v in lat.items() if disturbed(job))
    base = metrics.percentile(calm, 0.5) if calm else 0.0
    extra = [max(0.0, v - base) for v in hit]
    return {
        "runners": size.runners,
        "pods": size.pods,
        "rate": size.rate,
        "duration_s": size.duration,
        **acc,
        "drained": drained,
        "kills": [{"t": round(k["t"] - t_go, 3), "killed": k["killed"]} for k in kills],
        "connections_killed": sum(int(k["killed"]) for k in kills),
        "baseline_latency_ms": metrics.summary_ms(calm),
        "disturbed_latency_ms": metrics.summary_ms(hit),
        "extra_delay_max_ms": round(max(extra) * 1000, 3) if extra else 0.0,
        "extra_delay_p50_ms": round(metrics.percentile(sorted(extra), 0.5) * 1000, 3)
        if extra
        else 0.0,
        "delayed_over_100ms": sum(1 for v in extra if v > 0.1),
        "points": sorted([round(t0s[j] - t_go, 4), round(v * 1000, 3)] for j, v in lat.items()),
        **sim_health(results, sims),
    }


def size_dict(size: Size) -> dict[str, Any]:
    return asdict(size)
