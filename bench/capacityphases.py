"""The four measurements of the capacity scenario (issue 13), each returning JSON-ready figures.

1. ``latency``: submit -> `job` frame at a fixed moderate rate, standalone vs cluster, same pods
   and runners, in alternating rounds (so a burst of load from elsewhere hits both alike);
2. ``throughput``: the most acknowledged jobs/s one namespace (one shard) sustains, with 2 and
   3 pods (and standalone at the first pod count, for reference);
3. ``shards``: several namespaces at once, all on one primary vs one on each primary, aggregate
   acknowledged jobs/s and each primary's CPU;
4. ``pods``: one pod holding 1,000 / 3,000 / 5,000 idle runners: its RSS, its sockets and the
   dispatch latency at that count.

Every job a producer submitted is checked to have reached exactly one runner, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import deps, metrics
from bench.backends import Backend, cpu_seconds
from bench.common import ProducerResult, SimResult
from bench.harness import Harness, Pod, Sims
from bench.procs import Child
from bench.scenarios import Scope, deliveries, pids, pod_total, producer_cpu, sim_health


@dataclass(frozen=True)
class Sizes:
    """How big each measurement runs."""

    latency_runners: int = 200
    latency_pods: int = 2
    latency_rate: float = 100.0
    latency_duration: float = 20.0
    latency_rounds: int = 2
    throughput_runners: int = 200
    throughput_pods: tuple[int, ...] = (2, 3)
    throughput_duration: float = 20.0
    writers: int = 2
    max_backlog: int = 2000
    shard_namespaces: int = 3
    shard_runners: int = 100  # per namespace
    shard_duration: float = 20.0
    pod_runners: tuple[int, ...] = (1000, 3000, 5000)
    pod_rate: float = 50.0
    pod_duration: float = 10.0
    per_process: int = 1000
    settle: float = 2.0


FULL = Sizes()
QUICK = Sizes(
    latency_runners=4,
    latency_rate=20.0,
    latency_duration=1.5,
    latency_rounds=1,
    throughput_runners=4,
    throughput_duration=1.5,
    writers=1,
    max_backlog=50,
    shard_runners=2,
    shard_duration=1.5,
    pod_runners=(6, 12),
    pod_rate=10.0,
    pod_duration=1.0,
    per_process=6,
    settle=0.2,
)
DRAIN_TIMEOUT = 60.0


@dataclass
class Side:
    """One backend and the harness that drives it."""

    backend: Backend
    harness: Harness
    redis_pids: dict[str, int] = field(default_factory=dict)


@dataclass
class Fleet:
    ns: str
    pods: list[Pod]
    writers: list[Child]
    sims: Sims


@contextlib.asynccontextmanager
async def fleet_scope(h: Harness, namespaces: Sequence[str]) -> AsyncIterator[Scope]:
    """Stop what the measurement started, in reverse order, and delete its namespaces' keys."""
    s = Scope(h)
    try:
        yield s
    finally:
        await h.procs.stop_many(list(reversed(s.children)))
        for ns in namespaces:
            with contextlib.suppress(Exception):  # private servers: a leftover key is harmless
                await h.cleanup(ns)


async def start_fleet(
    h: Harness, s: Scope, ns: str, pods: int, writers: int, runners: int, per_process: int
) -> Fleet:
    started = await h.start_pods(ns, pods)
    s.add(started)
    bridge = await h.start_writers(ns, writers)
    s.add(bridge)
    sims = await h.start_sims(await h.register(ns, runners, started), per_process)
    s.add(sims)
    await h.wait_idle(ns, sims.connected, "pubsub")
    return Fleet(ns, started, bridge, sims)


def watched(side: Side, fleets: Sequence[Fleet]) -> dict[str, int]:
    out = dict(side.redis_pids)
    for k, fleet in enumerate(fleets):
        out |= pids(f"pod{k}-", fleet.pods) | pids(f"writer{k}-", fleet.writers)
        out |= pids(f"sim{k}-", fleet.sims.children)
    return out


def shard_cpu(ports: Sequence[int]) -> dict[int, float]:
    return {port: cpu_seconds(port) for port in ports}


def exactly_once(acc: dict[str, Any]) -> dict[str, Any]:
    return {k: acc[k] for k in ("submitted", "delivered", "lost", "duplicates", "unknown")}


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# -- 1. latency, standalone vs cluster ----------------------------------------------------------


async def latency_round(side: Side, sizes: Sizes, label: str) -> dict[str, Any]:
    h = side.harness
    ns = h.ns(f"lat-{label}")
    async with fleet_scope(h, [ns]) as s:
        fleet = await start_fleet(
            h, s, ns, sizes.latency_pods, 1, sizes.latency_runners, sizes.per_process
        )
        await asyncio.sleep(sizes.settle)
        producer = await h.start_producer(
            ns, "rate", rate=sizes.latency_rate, duration=sizes.latency_duration
        )
        s.add(producer)
        load0 = loadavg()
        cpu = metrics.CpuWindow.begin(watched(side, [fleet]), time.time())
        await producer.command("go")
        produced = await h.finish_producer(producer, sizes.latency_duration + 60)
        cpu_percent = cpu.end(time.time())
        cpu_percent["producer"] = producer_cpu(produced)
        drained = await h.wait_counter(ns, "completed", len(produced.submitted), DRAIN_TIMEOUT)
        results = await h.stop_sims(fleet.sims)
    acc = deliveries(produced.submitted, results)
    latencies = sorted(acc.pop("latencies").values())
    return {
        "backend": side.backend.name,
        "label": label,
        **exactly_once(acc),
        "drained": drained,
        "producer_errors": produced.errors,
        "producer_first_error": produced.first_error,
        "producer_max_lag_ms": round(produced.max_lag * 1000, 3),
        "latency_ms": metrics.summary_ms(latencies),
        "submit_call_ms": metrics.summary_ms(produced.submit_call),
        "pod_cpu_percent_total": pod_total(cpu_percent),
        "cpu_percent": cpu_percent,
        "loadavg": [load0, loadavg()],
        "_latencies": latencies,
        "_submit_calls": sorted(produced.submit_call),
        **sim_health(results, fleet.sims),
    }


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b <= 0:
        return None
    return round(a / b, 3)


async def latency(std: Side, cl: Side, sizes: Sizes) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for r in range(sizes.latency_rounds):
        order = (std, cl) if r % 2 == 0 else (cl, std)
        for side in order:
            rounds.append(await latency_round(side, sizes, f"{side.backend.name}-r{r}"))
    out: dict[str, Any] = {
        "runners": sizes.latency_runners,
        "pods": sizes.latency_pods,
        "rate": sizes.latency_rate,
        "duration_s": sizes.latency_duration,
        "rounds": sizes.latency_rounds,
    }
    for name in ("standalone", "cluster"):
        mine = [r for r in rounds if r["backend"] == name]
        pooled = sorted(v for r in mine for v in r["_latencies"])
        calls = sorted(v for r in mine for v in r["_submit_calls"])
        out[name] = {
            "latency_ms": metrics.summary_ms(pooled),
            "submit_call_ms": metrics.summary_ms(calls),
            "p50_per_round_ms": [r["latency_ms"].get("p50") for r in mine],
            "lost": sum(r["lost"] for r in mine),
            "duplicates": sum(r["duplicates"] for r in mine),
            "samples_ms": [round(v * 1000, 3) for v in pooled],
        }
    for detail in rounds:
        del detail["_latencies"], detail["_submit_calls"]
    out["rounds_detail"] = rounds
    s, c = out["standalone"], out["cluster"]
    out["ratio_cluster_over_standalone"] = {
        q: _ratio(c["latency_ms"].get(q), s["latency_ms"].get(q)) for q in ("p50", "p90", "p99")
    }
    out["ratio_submit_call_p50"] = _ratio(
        c["submit_call_ms"].get("p50"), s["submit_call_ms"].get("p50")
    )
    return out


# -- 2 and 3. most jobs/s of one or several namespaces ------------------------------------------


async def max_load(
    side: Side, fleets: list[Fleet], s: Scope, sizes: Sizes, duration: float
) -> dict[str, Any]:
    """Producers at full speed (pausing over ``max_backlog`` pending) into every fleet's
    namespace for ``duration``; then the backlog drains and every job is accounted for."""
    h = side.harness
    producers = []
    for fleet in fleets:
        child = await h.start_producer(
            fleet.ns, "max", duration=duration, max_backlog=sizes.max_backlog
        )
        s.add(child)
        producers.append(child)
    await asyncio.sleep(sizes.settle)
    before = {f.ns: await h.stats(f.ns) for f in fleets}
    ports = side.backend.data_ports
    redis0 = await asyncio.to_thread(shard_cpu, ports)
    load0 = loadavg()
    t_start = time.time()
    cpu = metrics.CpuWindow.begin(watched(side, fleets), t_start)
    await asyncio.gather(*(p.command("go") for p in producers))
    produced: list[ProducerResult] = list(
        await asyncio.gather(*(h.finish_producer(p, duration + 60) for p in producers))
    )
    t_end = time.time()
    cpu_percent = cpu.end(t_end)
    redis1 = await asyncio.to_thread(shard_cpu, ports)
    after = {f.ns: await h.stats(f.ns) for f in fleets}
    for k, p in enumerate(produced):
        cpu_percent[f"producer{k}"] = producer_cpu(p)
    drained = [
        await h.wait_counter(f.ns, "completed", len(p.submitted), DRAIN_TIMEOUT)
        for f, p in zip(fleets, produced, strict=True)
    ]
    results: list[list[SimResult]] = [await h.stop_sims(f.sims) for f in fleets]
    window = t_end - t_start
    per_ns = []
    total_acked = 0
    for fleet, prod, res in zip(fleets, produced, results, strict=True):
        acc = deliveries(prod.submitted, res)
        acc.pop("latencies")
        acked = sum(1 for r in res for t in r.acks if t_start <= t <= t_end)
        total_acked += acked
        done = after[fleet.ns].get("completed", 0) - before[fleet.ns].get("completed", 0)
        per_ns.append(
            {
                "namespace": fleet.ns,
                "acknowledged_per_s": round(acked / window, 1),
                "completed_per_s": round(done / window, 1),
                **exactly_once(acc),
                "producer_errors": prod.errors,
                "producer_first_error": prod.first_error,
                **sim_health(res, fleet.sims),
            }
        )
    redis_percent = {
        str(port): round(100.0 * (redis1[port] - redis0[port]) / window, 1) for port in ports
    }
    busiest = max(redis_percent.values(), default=0.0)
    return {
        "duration_s": round(window, 3),
        "acknowledged_per_s": round(total_acked / window, 1),
        "namespaces": per_ns,
        "lost": sum(n["lost"] for n in per_ns),
        "duplicates": sum(n["duplicates"] for n in per_ns),
        "drained": all(drained),
        "redis_cpu_percent_by_port": redis_percent,
        "redis_cpu_percent_busiest": busiest,
        # Redis CPU per acknowledged job on the busiest server, and what one of its cores would
        # carry at that cost (an extrapolation: this box cannot load one shard that far)
        "redis_ms_per_job_busiest": round(10.0 * busiest * window / total_acked, 4)
        if total_acked
        else None,
        "pod_cpu_percent_total": round(sum(v for k, v in cpu_percent.items() if "pod" in k), 1),
        "cpu_percent": cpu_percent,
        "loadavg": [load0, loadavg()],
    }


async def throughput_one(side: Side, sizes: Sizes, pods: int) -> dict[str, Any]:
    h = side.harness
    ns = h.ns(f"tput-{pods}pods")
    async with fleet_scope(h, [ns]) as s:
        fleet = await start_fleet(
            h, s, ns, pods, sizes.writers, sizes.throughput_runners, sizes.per_process
        )
        result = await max_load(side, [fleet], s, sizes, sizes.throughput_duration)
    return {
        "backend": side.backend.name,
        "pods": pods,
        "runners": sizes.throughput_runners,
        "writers": sizes.writers,
        **result,
    }


async def throughput(std: Side, cl: Side, sizes: Sizes) -> dict[str, Any]:
    runs = [await throughput_one(cl, sizes, pods) for pods in sizes.throughput_pods]
    runs.append(await throughput_one(std, sizes, sizes.throughput_pods[0]))
    return {"runs": runs}


async def shards_one(
    side: Side, sizes: Sizes, names: list[str], placement: str, where: dict[str, str]
) -> dict[str, Any]:
    h = side.harness
    async with fleet_scope(h, names) as s:
        fleets = [
            await start_fleet(h, s, ns, 1, 1, sizes.shard_runners, sizes.per_process)
            for ns in names
        ]
        result = await max_load(side, fleets, s, sizes, sizes.shard_duration)
    for row in result["namespaces"]:
        row["primary"] = where[row["namespace"]]
    return {
        "placement": placement,
        "shards_used": len(set(where[n] for n in names)),
        "namespaces_count": len(names),
        "runners_per_namespace": sizes.shard_runners,
        **result,
    }


async def shards(
    cl: Side, sizes: Sizes, same: list[str], spread: list[str], where: dict[str, str]
) -> dict[str, Any]:
    one = await shards_one(cl, sizes, same, "one shard", where)
    three = await shards_one(cl, sizes, spread, "one per shard", where)
    return {
        "runs": [one, three],
        "ratio_spread_over_one_shard": _ratio(
            three["acknowledged_per_s"], one["acknowledged_per_s"]
        ),
    }


# -- 4. runners per pod -------------------------------------------------------------------------


def pod_sockets(pid: int, port: int, redis_ports: Sequence[int]) -> dict[str, int]:
    """The pod's established WebSocket connections (on its port) and its Redis connections."""
    psutil = deps.psutil()
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return {"websocket": 0, "redis": 0}
    established = [c for c in conns if c.status == psutil.CONN_ESTABLISHED]
    return {
        "websocket": sum(1 for c in established if c.laddr.port == port),
        "redis": sum(1 for c in established if c.raddr and c.raddr.port in redis_ports),
    }


async def pods(side: Side, sizes: Sizes) -> dict[str, Any]:
    h = side.harness
    ns = h.ns("pods")
    counts = sorted(sizes.pod_runners)
    levels: list[dict[str, Any]] = []
    submitted_by_level: list[list[tuple[str, float]]] = []
    redis_ports = [*side.backend.data_ports]
    async with fleet_scope(h, [ns]) as s:
        pod_list = await h.start_pods(ns, 1)
        s.add(pod_list)
        pod = pod_list[0]
        writers = await h.start_writers(ns, 1)
        s.add(writers)
        runners = await h.register(ns, counts[-1], pod_list)
        await asyncio.sleep(sizes.settle)
        rss_empty = metrics.rss_bytes(pod.child.pid)
        all_sims: list[Sims] = []
        have = 0
        submitted_total = 0
        for count in counts:
            sims = await h.start_sims(runners[have:count], sizes.per_process, timeout=600)
            s.add(sims)
            all_sims.append(sims)
            have = count
            connected = sum(x.connected for x in all_sims)
            await h.wait_idle(ns, connected, "pubsub", timeout=300)
            await asyncio.sleep(sizes.settle)
            rss_idle = metrics.rss_bytes(pod.child.pid)
            sockets = pod_sockets(pod.child.pid, pod.port, redis_ports)
            producer = await h.start_producer(
                ns, "rate", rate=sizes.pod_rate, duration=sizes.pod_duration
            )
            s.add(producer)
            cpu = metrics.CpuWindow.begin({"pod": pod.child.pid}, time.time())
            load0 = loadavg()
            await producer.command("go")
            produced = await h.finish_producer(producer, sizes.pod_duration + 60)
            cpu_percent = cpu.end(time.time())
            submitted_total += len(produced.submitted)
            drained = await h.wait_counter(ns, "completed", submitted_total, DRAIN_TIMEOUT)
            submitted_by_level.append(produced.submitted)
            levels.append(
                {
                    "runners": count,
                    "connected": connected,
                    "connect_errors": sum(x.errors for x in all_sims),
                    "pod_websockets": sockets["websocket"],
                    "pod_redis_connections": sockets["redis"],
                    "pod_rss_idle_mib": round(rss_idle / 2**20, 1),
                    "pod_rss_per_runner_kib": round((rss_idle - rss_empty) / 1024 / connected, 1)
                    if connected
                    else None,
                    "pod_rss_after_jobs_mib": round(metrics.rss_bytes(pod.child.pid) / 2**20, 1),
                    "pod_cpu_percent": cpu_percent.get("pod"),
                    "machine_cpu_percent": cpu_percent.get("machine"),
                    "drained": drained,
                    "producer_errors": produced.errors,
                    "loadavg": [load0, loadavg()],
                }
            )
        results = [r for sims in all_sims for r in await h.stop_sims(sims)]
    overall = deliveries([j for level in submitted_by_level for j in level], results)
    overall.pop("latencies")
    for level, submitted in zip(levels, submitted_by_level, strict=True):
        acc = deliveries(submitted, results)
        level["latency_ms"] = metrics.summary_ms(acc.pop("latencies").values())
        level["submitted"], level["delivered"] = acc["submitted"], acc["delivered"]
    closed: dict[str, int] = {}
    for r in results:
        for code, n in r.closed.items():
            closed[code] = closed.get(code, 0) + n
    return {
        "backend": side.backend.name,
        "rate": sizes.pod_rate,
        "duration_s": sizes.pod_duration,
        "pod_rss_empty_mib": round(rss_empty / 2**20, 1),
        "levels": levels,
        **exactly_once(overall),
        "server_closed": closed,
        "protocol_errors": sum(r.protocol_errors for r in results),
    }


def sizes_dict(sizes: Sizes) -> dict[str, Any]:
    return asdict(sizes)
