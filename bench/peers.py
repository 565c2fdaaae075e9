"""The peer to beat: plain rq, one idle ``SimpleWorker``, under the dispatcher's submit load.

What is measured: **enqueue → job function starts**. A producer process enqueues
``bench.peers.started_at`` with rq's own ``Queue.enqueue`` on an open-loop schedule (``rate``
jobs/s for ``duration`` s, the dispatcher producer's schedule), taking ``t0 = time.time()`` just
before each call; one ``rq.SimpleWorker`` in a process of its own, idle in its blocking pop, runs
the job in that process (no fork). The job's first statement returns ``time.time()``, which rq
stores as the job's result; the latency is that minus ``t0`` (same machine, same clock). It is
the nearest thing rq has to the dispatcher's submit → ``job`` frame: the moment the work can begin.

Plain means rq's defaults, with two deliberate exceptions, both in rq's favour or neutral: the
worker logs at WARNING (rq's INFO lines cost it a write per job before the job starts), and each
job id is ``<queue>-<n>`` (so the harness can delete every key of the run; ids are not parsed by
rq). Exactly once: each job must have exactly one result (rq saves one per execution).

``python -m bench.peers producer CONFIG.json`` / ``python -m bench.peers worker CONFIG.json`` are
the two child processes (the harness starts them); ``rq_peer`` runs one measurement.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import msgspec
import redis
import redis.asyncio

from bench import metrics
from bench.common import ProducerResult, dump, load, say
from bench.harness import Harness, delete_namespace
from bench.procs import Child
from bench.scenarios import Size, producer_cpu, redis_pid
from dispatcher import redisconn

RESULT_TTL = 3600  # s: the harness reads every result after the load
# by name: this module runs as ``__main__`` in the producer, and rq refuses functions from there
JOB = "bench.peers.started_at"


class PeerConfig(msgspec.Struct):
    """One rq producer or worker process."""

    redis_url: str
    queue: str
    out: str = ""
    rate: float = 100.0
    duration: float = 20.0


def started_at() -> float:
    """The job: when it started (its return value is rq's stored result)."""
    return time.time()


# -- child processes ------------------------------------------------------------------------------


def produce(cfg: PeerConfig, connection: redis.Redis) -> ProducerResult:
    """Enqueue on a fixed schedule (a late enqueue is not made up with a burst)."""
    from rq import Queue

    queue = Queue(cfg.queue, connection=connection)
    submitted: list[tuple[str, float]] = []
    calls: list[float] = []
    errors, first_error, max_lag = 0, "", 0.0
    cpu0 = time.process_time()
    started = time.time()
    for i in range(int(cfg.rate * cfg.duration)):
        delay = started + i / cfg.rate - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            max_lag = max(max_lag, -delay)
        job_id = f"{cfg.queue}-{i}"
        t0 = time.time()
        try:
            queue.enqueue(JOB, job_id=job_id, result_ttl=RESULT_TTL)
        except redis.RedisError as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
            continue
        calls.append(time.time() - t0)
        submitted.append((job_id, t0))
    return ProducerResult(
        submitted=submitted,
        errors=errors,
        first_error=first_error,
        started=started,
        ended=time.time(),
        max_lag=max_lag,
        submit_call=calls,
        cpu_seconds=time.process_time() - cpu0,
    )


def run_producer(cfg: PeerConfig) -> None:
    connection = redisconn.sync_client(cfg.redis_url)
    connection.ping()
    say("ready")
    if sys.stdin.readline().strip() == "go":
        dump(cfg.out, produce(cfg, connection))
    connection.close()
    say("done")


def run_worker(cfg: PeerConfig) -> None:
    """rq's SimpleWorker on one queue until SIGTERM (rq's warm shutdown)."""
    from rq import Queue, SimpleWorker

    connection = redisconn.sync_client(cfg.redis_url, socket_timeout=None)
    worker = SimpleWorker(
        [Queue(cfg.queue, connection=connection)], connection=connection, name=f"{cfg.queue}-w"
    )
    worker.work(burst=False, logging_level="WARNING", with_scheduler=False)


def main() -> None:
    role, path = sys.argv[1], sys.argv[2]
    cfg = load(path, PeerConfig)
    if role == "producer":
        run_producer(cfg)
    elif role == "worker":
        run_worker(cfg)
    else:
        raise SystemExit(f"bench.peers: unknown role {role!r} (producer or worker)")


# -- the measurement --------------------------------------------------------------------------


def collect(url: str, job_ids: list[str]) -> dict[str, tuple[float | None, int]]:
    """Job id → (start time the job returned, number of results saved) for every job found."""
    from rq.job import Job

    connection = redisconn.sync_client(url)
    try:
        out: dict[str, tuple[float | None, int]] = {}
        for start in range(0, len(job_ids), 500):
            for job in Job.fetch_many(job_ids[start : start + 500], connection=connection):
                if job is None:
                    continue
                results = job.results()
                value = job.return_value()
                t = float(value) if isinstance(value, int | float) else None
                out[job.id] = (t, len(results))
        return out
    finally:
        connection.close()


def account(
    submitted: list[tuple[str, float]], seen: dict[str, tuple[float | None, int]]
) -> dict[str, Any]:
    """Exactly-once accounting and the latencies (s) of the jobs that started."""
    latencies = []
    lost = duplicates = 0
    for job_id, t0 in submitted:
        started, results = seen.get(job_id, (None, 0))
        if started is None:
            lost += 1
            continue
        duplicates += max(0, results - 1)
        latencies.append(started - t0)
    return {
        "submitted": len(submitted),
        "delivered": len(submitted) - lost,
        "lost": lost,
        "duplicates": duplicates,
        "latencies": sorted(latencies),
    }


async def _until(probe: Any, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():
            return True
        await asyncio.sleep(every)
    return False


async def _spawn(h: Harness, role: str, cfg: PeerConfig, pipes: bool) -> Child:
    path = h.work_dir / f"rq-{role}-{len(h.procs.children) + 1:03d}.json"
    dump(path, cfg)
    child = await h.procs.python(f"rq-{role}", "bench.peers", role, str(path), env={}, pipes=pipes)
    child.config = path
    return child


async def rq_peer(h: Harness, size: Size, label: str) -> dict[str, Any]:
    """One run: an idle SimpleWorker, then ``size.rate`` jobs/s for ``size.duration`` s."""
    url = getattr(h, "results_redis_url", "") or h.redis_url
    queue = h.ns(f"rq-{label}").strip("{}")  # rq refuses braces in ids
    client = redisconn.async_client(url, 4, 10.0) if url != h.redis_url else h.client
    children: list[Child] = []
    try:
        worker = await _spawn(h, "worker", PeerConfig(url, queue), pipes=False)
        children.append(worker)

        async def listening() -> bool:  # rq registers the worker per queue once it listens
            if worker.proc.returncode is not None:
                raise worker.failure("exited during start-up")
            return int(await client.scard(f"rq:workers:{queue}")) > 0

        if not await _until(listening, 30):
            raise worker.failure("not listening within 30 s")
        await asyncio.sleep(size.settle)
        out = str(h.work_dir / f"rq-producer-{queue}.out.json")
        cfg = PeerConfig(url, queue, out, rate=size.rate, duration=size.duration)
        producer = await _spawn(h, "producer", cfg, pipes=True)
        children.append(producer)
        await producer.event("ready", 30)
        watched = {"worker0": worker.pid, **await redis_pid(h)}
        cpu = metrics.CpuWindow.begin(watched, time.time())
        await producer.command("go")
        await producer.event("done", size.duration + 60)
        cpu_percent = cpu.end(time.time())
        await h.procs.stop(producer, 10)
        produced = load(out, ProducerResult)
        cpu_percent["producer0"] = producer_cpu(produced)
        ids = [job_id for job_id, _ in produced.submitted]

        async def finished() -> bool:
            return int(await client.zcard(f"rq:finished:{queue}")) >= len(ids)

        drained = await _until(finished, 10 + size.duration)
        seen = await asyncio.to_thread(collect, url, ids)
    finally:
        await h.procs.stop_many(list(reversed(children)))
        await delete_namespace(client, queue)
        if client is not h.client:
            await client.aclose()
    acc = account(produced.submitted, seen)
    ordered = acc.pop("latencies")
    return {
        "system": "rq SimpleWorker",
        "measures": "enqueue call → job function starts",
        "rate": size.rate,
        "duration_s": size.duration,
        "workers": 1,
        **acc,
        "drained": drained,
        "producer_errors": produced.errors,
        "producer_first_error": produced.first_error,
        "producer_max_lag_ms": round(produced.max_lag * 1000, 3),
        "latency_ms": metrics.summary_ms(ordered),
        "submit_call_ms": metrics.summary_ms(produced.submit_call),
        "cpu_percent": cpu_percent,
        "samples_ms": [round(v * 1000, 3) for v in ordered],
    }


if __name__ == "__main__":
    main()
