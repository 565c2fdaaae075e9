"""The rq tasks of the result writers: record a batch of results, write a batch to a sink.

They run under ``worker-bridge`` or a plain ``rq worker -s <namespace>:results`` and find their
Redis connection through rq. Settings and sinks are built once per process (``context``), not per
task.

- ``process_batch``: one ``record`` function call for the whole batch (compare-and-set
  ``completed`` -> ``processed``, one ``recorded`` event per failed/canceled attempt, retention TTL,
  usage metered once per job (``dispatcher.usage``), done notices, entries handed to every sink's
  box, entries removed from the outbox). A batch run twice changes nothing the second time.
- ``sink_batch``: the final records of a batch of sink box entries (one pipeline), written by the
  sink, then removed from the box. On failure the delivered part is removed, the rest stays hidden
  until rq's next retry; after the last try the batch ends in rq's failed registry (``rq requeue``
  sends it again) and its entries stay parked in the box (score +inf) until then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import get_current_job

from dispatcher import functions, redisconn
from dispatcher.keys import Keys
from dispatcher.results import PumpConfig
from dispatcher.settings import Settings
from worker_bridge.sinks import Sink, SinkFailure, build_sinks
from worker_bridge.sinks.records import load_records

log = logging.getLogger(__name__)


@dataclass
class WriterContext:
    """What a writer process reads once: settings and its sinks."""

    settings: Settings
    sinks: dict[str, Sink] = field(default_factory=dict)
    # the namespace's Redis when rq runs on another one (DISPATCHER_RESULTS_REDIS_URL); None: the
    # tasks use rq's own connection for both
    namespace_redis: redis.Redis | None = None

    @classmethod
    def build(cls, settings: Settings) -> WriterContext:
        own = redisconn.sync_client(settings.redis_url) if settings.results_redis_url else None
        return cls(settings, build_sinks(settings), own)

    def connection(self, given: redis.Redis | None) -> redis.Redis:
        """The namespace's Redis: ``given`` (tests, scripts), ours, or the running rq job's."""
        return given or self.namespace_redis or _rq_connection()

    @property
    def retention(self) -> int:
        return int(self.settings.job_retention)

    @property
    def sink_names(self) -> list[str]:
        return list(self.sinks)


_context: WriterContext | None = None


def context() -> WriterContext:
    """This process's writer context (from the environment on first use)."""
    global _context
    if _context is None:
        _context = WriterContext.build(Settings.from_env())
    return _context


def install_context(ctx: WriterContext) -> None:
    """Use ``ctx`` for the tasks of this process (``worker-bridge`` builds and checks it first)."""
    global _context
    _context = ctx


def process_batch(
    namespace: str,
    entries: list[str],
    *,
    connection: redis.Redis | None = None,
    ctx: WriterContext | None = None,
) -> dict[str, int]:
    """Record a batch of outbox entries; counts of entries and of records this call changed."""
    outcome = _record(namespace, list(entries), connection, ctx)
    changed = sum(1 for _, c in outcome if c)
    log.info("recorded %d of %d results", changed, len(entries))
    return {"entries": len(entries), "recorded": changed}


def process_result(
    namespace: str,
    job_id: str,
    attempt: int,
    *,
    connection: redis.Redis | None = None,
    ctx: WriterContext | None = None,
) -> str:
    """Record one attempt's result; the job's status afterwards ('' when unknown).

    The task of the previous release (one result per rq job, still queued during an upgrade),
    and a handy call for scripts and tests (``connection=``).
    """
    return _record(namespace, [f"{job_id}:{int(attempt)}"], connection, ctx)[0][0]


def _record(
    namespace: str, entries: list[str], connection: redis.Redis | None, ctx: WriterContext | None
) -> list[tuple[str, bool]]:
    """One ``record`` function call: per entry, the status afterwards and whether it changed."""
    ctx = ctx or context()
    call = functions.record(
        Keys(namespace),
        entries,
        ctx.retention,
        ctx.sink_names,
        ctx.settings.usage_retention_days,
    )
    return functions.run_sync(ctx.connection(connection), call)


def sink_batch(
    namespace: str,
    sink: str,
    entries: list[str],
    *,
    connection: redis.Redis | None = None,
    ctx: WriterContext | None = None,
) -> dict[str, int]:
    """Write the final records of ``entries`` to ``sink``; remove them from its box when done."""
    ctx = ctx or context()
    conn = ctx.connection(connection)
    keys = Keys(namespace)
    target = ctx.sinks.get(sink)
    if target is None:
        # this writer does not run that sink: leave the entries for one that does
        raise SinkFailure(f"sink {sink!r} is not configured on this writer (DISPATCHER_SINKS)")
    jobs, gone = load_records(conn, keys, sink, list(entries))
    try:
        target.write(jobs)
    except SinkFailure as exc:
        delivered = [job.entry for job in jobs[: exc.delivered]] + gone
        rest = [job.entry for job in jobs[exc.delivered :]]
        _after_failure(conn, keys, sink, delivered, rest, ctx)
        raise
    _remove(conn, keys, sink, [job.entry for job in jobs] + gone)
    return {"entries": len(entries), "written": len(jobs)}


def _after_failure(
    conn: redis.Redis,
    keys: Keys,
    sink: str,
    delivered: list[str],
    rest: list[str],
    ctx: WriterContext,
) -> None:
    """Keep what was delivered; hide the rest until rq's next try, or let it go after the last."""
    _remove(conn, keys, sink, delivered)
    job = get_current_job()
    if not rest:
        return
    if job is not None and not job.retries_left:
        # the last try: rq moves this batch to its failed registry. The entries stay in the box,
        # parked (score +inf: never due), so `rq requeue` of the batch writes them then.
        conn.zadd(keys.sinkbox(sink), dict.fromkeys(rest, "+inf"), xx=True)
        return
    # rq tries again after its next interval (outside rq: a pump hands them out again)
    wait = float(job.get_retry_interval()) if job is not None else 0.0
    hidden = PumpConfig().sink_visibility + wait
    seconds, micros = conn.time()  # box scores are on the Redis server's clock
    until = int((seconds + micros / 1e6 + hidden) * 1000)
    conn.zadd(keys.sinkbox(sink), dict.fromkeys(rest, until), xx=True)


def _remove(conn: redis.Redis, keys: Keys, sink: str, entries: list[str]) -> None:
    if entries:
        conn.zrem(keys.sinkbox(sink), *entries)


def _rq_connection() -> redis.Redis:
    job = get_current_job()
    if job is None:
        raise RuntimeError("this task runs under an rq worker, or needs connection=")
    connection: Any = job.connection
    return connection  # type: ignore[no-any-return]
