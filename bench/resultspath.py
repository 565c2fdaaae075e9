"""Scenario 6, the results path (issue 8): `python -m bench --scenario results`.

Four phases, each in its own namespace with its own processes (pods via ``dispatcher serve``,
result writers via ``worker-bridge``):

- ``load``: 2 pods, 2 writers, 200 simulated runners finishing every job at once and a producer
  keeping the queue full for ``duration`` s. Sampled every second: the ``completed`` and
  ``processed`` counters, the outbox size (ZCARD) and the rq results queue length (batches).
  Acknowledged/s comes from the runners' own `ack` times. After the window the sampler goes on
  until every acknowledged result is processed (or 30 s), to show the tail.
- ``drain``: ``drain`` results already waiting (completed job records and their outbox entries,
  written by the harness in one pipeline per 2,000, shaped as ``finish`` leaves them), pods
  running, then 2 writers started: seconds from starting them until every result is processed.
- ``postgres``: the same with ``DISPATCHER_SINKS=postgres`` (table created by
  ``worker-bridge --init-db``): until every result is processed *and* written to PostgreSQL
  (the sink box empty, the rows counted at the end). Skipped, with the reason, when PostgreSQL
  does not answer.
- ``kill``: one writer started, then ``kill_results`` results waiting; the writer is killed with
  SIGKILL mid-batch (rq has a batch of it in its started registry whose results are not recorded
  yet: the writer is paused with SIGSTOP while the harness checks, so the kill lands between
  taking a batch and recording it), a new writer started at once: seconds from that start until
  every result is processed, the killed batch included.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from bench import deps, metrics
from bench.common import SPEC
from bench.harness import Harness
from bench.scenarios import (
    Sampler,
    Size,
    deliveries,
    pids,
    producer_cpu,
    redis_pid,
    scope,
    sim_health,
)
from dispatcher.keys import Keys

PHASES = ("load", "drain", "postgres", "kill")
SEED_CHUNK = 2000
TAIL_WAIT = 30.0  # s the load phase waits after its window for the backlog to drain


def _pod_env(size: Size) -> dict[str, str]:
    return {"DISPATCHER_OUTBOX_VISIBILITY": str(size.visibility)} if size.visibility else {}


async def sample_backlog(h: Harness, ns: str, out: list[dict[str, float]], sink: str = "") -> None:
    """One row of the results path's state, read in one pipeline."""
    keys = Keys(ns)
    async with h.client.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.stats, "completed", "processed", "failed", "canceled")
        pipe.zcard(keys.outbox)
        pipe.llen(Keys.rq_queue(keys.results_queue))
        pipe.zcard(keys.pending(SPEC))
        if sink:
            pipe.zcard(keys.sinkbox(sink))
            pipe.llen(Keys.rq_queue(keys.sink_queue(sink)))
        reply = await pipe.execute()
    completed, processed = (int(v or 0) for v in reply[0][:2])
    row = {
        "t": time.time(),
        "completed": completed,
        "processed": processed,
        "outbox": int(reply[1]),
        "rq_queue": int(reply[2]),
        "pending": int(reply[3]),
    }
    if sink:
        row["sinkbox"] = int(reply[4])
        row["sink_queue"] = int(reply[5])
    out.append(row)


def _relative(series: list[dict[str, float]], t0: float) -> list[dict[str, float]]:
    return [{k: (round(v - t0, 3) if k == "t" else v) for k, v in row.items()} for row in series]


def per_second(times: list[float], t0: float, t1: float) -> list[list[float]]:
    """[second since t0, events in that second] for every whole second of [t0, t1)."""
    n = max(1, int(t1 - t0 + 0.999))
    counts = [0] * n
    for t in times:
        k = int(t - t0)
        if 0 <= k < n:
            counts[k] += 1
    return [[k + 1.0, float(c)] for k, c in enumerate(counts)]


async def wait_until(
    check: Callable[[], Any], timeout: float, every: float = 0.02
) -> tuple[bool, float]:
    """Await ``check()`` until true; (reached, time.time() when it was)."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True, time.time()
        if time.monotonic() >= deadline:
            return False, time.time()
        await asyncio.sleep(every)


# -- phase 1: load ---------------------------------------------------------------------------


async def load(h: Harness, size: Size) -> dict[str, Any]:
    ns = h.ns("results-load")
    series: list[dict[str, float]] = []
    async with scope(h, ns) as s:
        pods = await h.start_pods(ns, size.pods, extra_env=_pod_env(size))
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
        redis_before = await metrics.redis_snapshot(h.client)
        sampler = Sampler(lambda: sample_backlog(h, ns, series), 0.25 if h.quick else 1.0)
        await asyncio.gather(*(p.command("go") for p in producers))
        produced = [await h.finish_producer(p, size.duration + 60) for p in producers]
        t_end = time.time()
        after = await h.stats(ns)
        cpu_percent = cpu.end(t_end)
        redis_after = await metrics.redis_snapshot(h.client)
        for k, p in enumerate(produced):
            cpu_percent[f"producer{k}"] = producer_cpu(p)
        end_row: list[dict[str, float]] = []
        await sample_backlog(h, ns, end_row)

        async def caught_up() -> bool:
            st = await h.stats(ns)
            return st.get("processed", 0) >= st.get("completed", 0)

        drained, t_drained = await wait_until(caught_up, TAIL_WAIT)
        await asyncio.sleep(0 if h.quick else 1.0)  # one more sample after the tail
        await sampler.stop()
        results = await h.stop_sims(sims)
    window = t_end - t_start
    acked_times = [t for r in results for t in r.acks]
    acked = sum(1 for t in acked_times if t_start <= t <= t_end)
    submitted = [item for p in produced for item in p.submitted]
    acc = deliveries(submitted, results)
    acc.pop("latencies")

    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    processed_rate = delta("processed") / window
    backlog_end = int(end_row[0]["completed"] - end_row[0]["processed"])
    return {
        "runners": size.runners,
        "pods": size.pods,
        "writers": size.writers,
        "producers": size.producers,
        "duration_s": round(window, 3),
        "submitted_per_s": round(delta("submitted") / window, 1),
        "acknowledged_per_s": round(acked / window, 1),
        "completed_per_s": round(delta("completed") / window, 1),
        "processed_per_s": round(processed_rate, 1),
        "processed_over_acknowledged": round(delta("processed") / max(delta("completed"), 1), 3),
        "backlog_at_end": backlog_end,
        # None: nothing was processed, so the backlog is no amount of work done
        "backlog_at_end_s_of_work": round(backlog_end / processed_rate, 3)
        if processed_rate > 0
        else None,
        "outbox_at_end": int(end_row[0]["outbox"]),
        "rq_queue_at_end": int(end_row[0]["rq_queue"]),
        "pending_mean": round(sum(r["pending"] for r in series) / max(len(series), 1), 1),
        "caught_up": drained,
        "caught_up_after_end_s": round(t_drained - t_end, 3) if drained else None,
        "duplicates": acc["duplicates"],
        "unknown": acc["unknown"],
        "delivered": acc["delivered"],
        "submitted": acc["submitted"],
        "producer_errors": sum(p.errors for p in produced),
        "cpu_percent": cpu_percent,
        "redis": metrics.command_delta(redis_before, redis_after, window),
        "series": _relative(series, t_start),
        "acked_per_second": per_second(acked_times, t_start, series[-1]["t"] if series else t_end),
        **sim_health(results, sims),
    }


# -- seeding ------------------------------------------------------------------------------------


async def seed(h: Harness, ns: str, count: int) -> list[str]:
    """``count`` completed jobs (attempt 1) and their outbox entries, as ``finish`` leaves them."""
    keys = Keys(ns)
    seconds, micros = await h.client.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    entries: list[str] = []
    for start in range(0, count, SEED_CHUNK):
        n = min(SEED_CHUNK, count - start)
        async with h.client.pipeline(transaction=False) as pipe:
            chunk: dict[str, int] = {}
            for k in range(start, start + n):
                job = str(uuid.uuid4())
                pipe.hset(
                    keys.job(job),
                    mapping={
                        "id": job,
                        "spec": SPEC,
                        "payload": f'{{"i": {k}}}',
                        "priority": "0",
                        "timeout": "600",
                        "max_attempts": "1",
                        "attempt": "1",
                        "status": "completed",
                        "runner": f"r{k % 200:05d}",
                        "created": str(now - 30),
                        "claimed": str(now - 20),
                        "started": str(now - 10),
                        "finished": str(now),
                        "qmember": f"{k:016d}:{job}",
                        "lost_starts": "0",
                        "runs": "1",
                        "exit_code": "0",
                        "results": f'{{"tests": {k % 97}, "ok": true}}',
                        "stdout": f"job {k}: ok\n",
                        "error": "",
                        "failed_by": "",
                        "cancel_reason": "",
                    },
                )
                chunk[f"{job}:1"] = now
            pipe.zadd(keys.outbox, chunk)
            pipe.hincrby(keys.stats, "completed", n)
            await pipe.execute()
        entries.extend(chunk)
    return entries


# -- phases 2 and 3: drain ----------------------------------------------------------------------


def postgres_problem(url: str) -> str:
    """'' when PostgreSQL at ``url`` answers, else why not (one line)."""
    if not url:
        return "no PostgreSQL URL (--postgres-url or DISPATCHER_POSTGRES_URL)"
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL did not answer: {(str(exc).strip().splitlines() or ['?'])[0]}"
    return ""


def _pg_rows(url: str, ns: str, delete: bool = False) -> int:
    import psycopg

    from worker_bridge.sinks.postgres import TABLE

    with psycopg.connect(url, connect_timeout=5) as conn:
        if delete:
            cur = conn.execute(f"DELETE FROM {TABLE} WHERE namespace = %s", (ns,))
            return cur.rowcount
        row = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE namespace = %s", (ns,)).fetchone()
        return int(row[0]) if row else 0


async def init_db(h: Harness, ns: str, env: dict[str, str]) -> None:
    child = await h.procs.python(
        "writer-init-db", "worker_bridge", "--init-db", env={**h.env(ns), **env}
    )
    code = await asyncio.wait_for(child.proc.wait(), 60)
    child.stopped = True
    if code != 0:
        raise child.failure(f"worker-bridge --init-db exited {code}")


async def drain(h: Harness, size: Size, sink: str = "") -> dict[str, Any]:
    ns = h.ns(f"results-drain{'-' + sink if sink else ''}")
    keys = Keys(ns)
    env: dict[str, str] = {}
    if sink == "postgres":
        problem = await asyncio.to_thread(postgres_problem, h.postgres_url)
        if problem:
            return {"skipped": problem}
        env = {"DISPATCHER_SINKS": "postgres", "DISPATCHER_POSTGRES_URL": h.postgres_url}
    series: list[dict[str, float]] = []
    rows = 0
    try:
        async with scope(h, ns) as s:
            pods = await h.start_pods(ns, size.pods, extra_env=_pod_env(size))
            s.add(pods)
            if sink == "postgres":
                await init_db(h, ns, env)
            t_seed = time.time()
            await seed(h, ns, size.drain)
            seed_s = time.time() - t_seed
            sampler = Sampler(lambda: sample_backlog(h, ns, series, sink), 0.25)
            t0 = time.time()
            writers = await h.start_writers(ns, size.writers, env)
            s.add(writers)
            watched = {**pids("pod", pods), **pids("writer", writers), **await redis_pid(h)}
            cpu = metrics.CpuWindow.begin(watched, t0)
            redis_before = await metrics.redis_snapshot(h.client)

            async def processed_all() -> bool:
                return (await h.stats(ns)).get("processed", 0) >= size.drain

            async def first_processed() -> bool:
                return (await h.stats(ns)).get("processed", 0) > 0

            timeout = 60 + size.drain / 200
            _, t_first = await wait_until(first_processed, timeout)
            done, t_processed = await wait_until(processed_all, timeout)
            t_done = t_processed
            sink_done = True
            if sink and done:

                async def sink_empty() -> bool:
                    return int(await h.client.zcard(keys.sinkbox(sink))) == 0

                sink_done, t_done = await wait_until(sink_empty, timeout)
            cpu_percent = cpu.end(t_done)
            redis_after = await metrics.redis_snapshot(h.client)
            await asyncio.sleep(0.3)
            await sampler.stop()
            if sink == "postgres":
                rows = await asyncio.to_thread(_pg_rows, h.postgres_url, ns)
            processed = (await h.stats(ns)).get("processed", 0)
    finally:
        if sink == "postgres":
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_pg_rows, h.postgres_url, ns, True)
    out: dict[str, Any] = {
        "sink": sink or None,
        "results": size.drain,
        "writers": size.writers,
        "pods": size.pods,
        "seed_s": round(seed_s, 3),
        "processed": processed,
        "done": done and sink_done,
        "processed_s": round(t_processed - t0, 3),
        "first_processed_after_s": round(t_first - t0, 3),
        "processed_per_s": round(size.drain / max(t_processed - t0, 1e-9), 1),
        "processed_per_s_after_first": round(size.drain / max(t_processed - t_first, 1e-9), 1),
        "cpu_percent": cpu_percent,
        "redis": metrics.command_delta(redis_before, redis_after, t_done - t0),
        "series": _relative(series, t0),
    }
    if sink:
        out["rows_written"] = rows
        out["written_s"] = round(t_done - t0, 3)
        out["written_per_s"] = round(rows / max(t_done - t0, 1e-9), 1)
    return out


# -- phase 4: kill -9 a writer mid-batch --------------------------------------------------------


def _batch_entries(url: str, job_ids: list[str]) -> list[tuple[str, list[str]]]:
    """(rq job id, its entries) of the given results batches (rq's own decoding)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    conn = redis.Redis.from_url(url)
    try:
        out = []
        for job_id in job_ids:
            with contextlib.suppress(NoSuchJobError):
                job = Job.fetch(job_id, connection=conn)
                out.append((job_id, [str(e) for e in job.args[1]]))
        return out
    finally:
        conn.close()


async def _statuses(h: Harness, ns: str, entries: list[str]) -> list[str]:
    keys = Keys(ns)
    async with h.client.pipeline(transaction=False) as pipe:
        for entry in entries:
            pipe.hget(keys.job(entry.rpartition(":")[0]), "status")
        return [str(v) for v in await pipe.execute()]


async def kill(h: Harness, size: Size) -> dict[str, Any]:
    ns = h.ns("results-kill")
    keys = Keys(ns)
    series: list[dict[str, float]] = []
    total = size.kill_results
    async with scope(h, ns) as s:
        pods = await h.start_pods(ns, size.pods, extra_env=_pod_env(size))
        s.add(pods)
        (victim,) = await h.start_writers(ns, 1)
        s.add([victim])

        async def listening() -> bool:  # rq registers a worker per queue once it listens
            return int(await h.client.scard(f"rq:workers:{keys.results_queue}")) > 0

        if not (await wait_until(listening, 30))[0]:
            raise victim.failure("the first writer did not start within 30 s")
        t0 = time.time()
        sampler = Sampler(lambda: sample_backlog(h, ns, series), 0.1)
        await seed(h, ns, total)  # after the writer listens: its first batches come while we watch
        held: list[tuple[str, list[str]]] = []
        unrecorded_at_kill = 0
        wip = f"rq:wip:{keys.results_queue}"  # rq's started registry: '<job id>:<execution>'
        give_up = time.monotonic() + 20
        # Catch the writer mid-batch: a batch in rq's started registry whose results are not
        # recorded yet. The writer is paused (SIGSTOP) while the harness looks, then killed
        # (SIGKILL) if it holds such a batch, else let go (SIGCONT) and watched again. After
        # 20 s without such a moment it is killed while rq holds any batch of it.
        checked: set[str] = set()  # batches found already recorded: not stopped for again
        t_stop = time.time()
        await asyncio.to_thread(_batch_entries, h.redis_url, [])  # rq imported before the race
        while True:
            if victim.proc.returncode is not None:
                raise victim.failure("the first writer exited")
            members = await h.client.zrange(wip, 0, -1)
            started = [j for m in members if (j := str(m).rpartition(":")[0]) not in checked]
            if started:
                t_stop = time.time()
                victim.proc.send_signal(signal.SIGSTOP)
                held = await asyncio.to_thread(_batch_entries, h.redis_url, started)
                entries = [e for _, batch in held for e in batch]
                unrecorded_at_kill = sum(
                    1 for st in await _statuses(h, ns, entries) if st == "completed"
                )
                if unrecorded_at_kill or time.monotonic() > give_up:
                    break
                checked.update(started)
                victim.proc.send_signal(signal.SIGCONT)
            elif time.monotonic() > give_up + 10:
                raise victim.failure("no batch of the first writer was seen started in 30 s")
            await asyncio.sleep(0)
        psutil = deps.psutil()
        try:  # the rq scheduler it forked: ended by the harness after the restart, not waited for
            orphans = psutil.Process(victim.pid).children(recursive=True)
        except psutil.Error:
            orphans = []
        victim.proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
        t_kill = time.time()
        batch_entries = [e for _, batch in held for e in batch]
        processed_at_kill = (await h.stats(ns)).get("processed", 0)
        t_restart = time.time()
        s.add(await h.start_writers(ns, 1, first=1))
        await h.procs.stop(victim, 5)  # reaps it (already dead)
        for proc in orphans:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        await asyncio.to_thread(psutil.wait_procs, orphans, 5)

        async def batch_done() -> bool:
            return all(st == "processed" for st in await _statuses(h, ns, batch_entries))

        async def all_done() -> bool:
            return (await h.stats(ns)).get("processed", 0) >= total

        timeout = 60 + total / 200
        batch_ok, t_batch = await wait_until(batch_done, timeout, every=0.05)
        done, t_done = await wait_until(all_done, timeout, every=0.05)
        await asyncio.sleep(0.3)
        await sampler.stop()
    return {
        "results": total,
        "pods": size.pods,
        "visibility_s": size.visibility or 10.0,
        "killed_after_s": round(t_kill - t0, 3),
        "caught_mid_batch": unrecorded_at_kill > 0,
        "processed_at_kill": processed_at_kill,
        "killed_batches": len(held),
        "killed_batch_entries": len(batch_entries),
        "killed_batch_unrecorded_at_kill": unrecorded_at_kill,
        "done": done and batch_ok,
        "all_processed_after_restart_s": round(t_done - t_restart, 3),
        # counted from the SIGSTOP that froze the writer (its last moment of work): the harness's
        # check before the kill must not shorten the figure
        "all_processed_after_stop_s": round(t_done - t_stop, 3),
        "stopped_to_restart_s": round(t_restart - t_stop, 3),
        "killed_batch_processed_after_restart_s": round(t_batch - t_restart, 3),
        "restart_s": round(t_restart - t0, 3),
        "series": _relative(series, t0),
    }


# -- the scenario -------------------------------------------------------------------------------


async def results(h: Harness, size: Size) -> dict[str, Any]:
    """Every phase asked for (``--results-phases``); a failing phase is recorded, not fatal."""
    out: dict[str, Any] = {"phases": {}, "errors": {}}
    phases = h.results_phases or PHASES
    runs: dict[str, Callable[[], Any]] = {
        "load": lambda: load(h, size),
        "drain": lambda: drain(h, size),
        "postgres": lambda: drain(h, size, "postgres"),
        "kill": lambda: kill(h, size),
    }
    for name in phases:
        h.log(f"results: phase {name}")
        print(f"[bench] results/{name}: running ...", flush=True)
        try:
            out["phases"][name] = await runs[name]()
        except Exception as exc:  # one phase failing must not lose the others' figures
            out["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(f"[bench] results/{name}: FAILED: {exc}", flush=True)
            continue
        print(f"[bench] results/{name}: {phase_headline(name, out['phases'][name])}", flush=True)
    if out["errors"] and not out["phases"]:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in out["errors"].items()))
    return out


def phase_headline(name: str, r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    if name == "load":
        return (
            f"acknowledged {r['acknowledged_per_s']}/s, processed {r['processed_per_s']}/s, "
            f"processed/acknowledged {r['processed_over_acknowledged']}, backlog at end "
            f"{r['backlog_at_end']} ({r['backlog_at_end_s_of_work']} s of work)"
        )
    if name in ("drain", "postgres"):
        extra = (
            f", {r['rows_written']} rows written in {r['written_s']} s ({r['written_per_s']}/s)"
            if r.get("sink")
            else ""
        )
        return (
            f"{r['results']} results processed in {r['processed_s']} s = "
            f"{r['processed_per_s']}/s ({r['processed_per_s_after_first']}/s after the first)"
            + extra
        )
    return (
        f"killed with {r['killed_batch_entries']} entries held "
        f"({r['killed_batch_unrecorded_at_kill']} unrecorded); all processed "
        f"{r['all_processed_after_restart_s']} s after the restart (killed batch "
        f"{r['killed_batch_processed_after_restart_s']} s)"
    )


def rates(series: list[dict[str, float]], name: str) -> tuple[list[float], list[float]]:
    """(t, d name / dt) between consecutive samples."""
    xs, ys = [], []
    for a, b in itertools.pairwise(series):
        dt = b["t"] - a["t"]
        if dt > 0:
            xs.append(b["t"])
            ys.append((b[name] - a[name]) / dt)
    return xs, ys
