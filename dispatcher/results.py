"""The results pump: due outbox entries become rq jobs carrying many results each.

Every terminal outcome enters the namespace's outbox in the same Redis Function call that records
it (``finalize`` in the Lua library). ``pump_once`` asks the ``pump`` function for due entries (it
re-scores them to now + visibility instead of removing them, so a batch lost with its pod or its
writer is handed out again) and enqueues them as rq jobs of up to ``batch_size`` entries each, all
in one pipeline. rq stays the queue: ``rq info``, ``rq worker``, retries and the failed registry
see ordinary jobs. Any process may pump (pods do, on their tick and shortly after each result);
two pumps never get the same entry while it is held, and a writer records each entry by
compare-and-set, so an entry handed out twice is recorded once in effect.

The rq queues may live on their own Redis (``DISPATCHER_RESULTS_REDIS_URL``, required on a Redis
Cluster, where rq cannot run): the pump then measures the queues' lengths there and passes them to
the ``pump`` function, and enqueues the batches there; the outbox stays in the namespace's slot.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, Retry

from dispatcher import functions
from dispatcher.keys import Keys
from dispatcher.settings import Settings

log = logging.getLogger(__name__)

RESULTS_TASK = "worker_bridge.tasks.process_batch"
SINK_TASK = "worker_bridge.tasks.sink_batch"
# A results batch that fails (Redis unreachable from the writer) is retried by rq; the outbox
# hands its entries out again after the visibility timeout in any case.
RESULTS_RETRY = [1, 5, 30]
RESULT_TTL = 3600
FAILURE_TTL = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class PumpConfig:
    """How the pump cuts and paces batches (from ``Settings``)."""

    batch_size: int = 256
    max_take: int = 1024  # entries per box per pump call: a few batches
    visibility: float = 10.0  # s an entry handed out stays hidden before it is handed out again
    sink_visibility: float = 60.0  # the same for sink entries (a sink task extends it on retry)
    max_queued: int = 8  # rq jobs already waiting on a queue before the pump stops adding
    sink_retry: tuple[int, ...] = (1, 5, 30, 120, 300)

    @classmethod
    def from_settings(cls, settings: Settings) -> PumpConfig:
        size = settings.result_batch_size
        return cls(
            batch_size=size,
            max_take=size * 4,
            visibility=settings.outbox_visibility,
            sink_retry=settings.sink_retry_intervals,
        )


@dataclass(frozen=True, slots=True)
class PumpResult:
    results: int  # outbox entries enqueued
    sinks: int  # sink box entries enqueued
    batches: int
    more: bool  # due entries left behind: pump again soon


def batches(entries: list[str], size: int) -> list[list[str]]:
    """Cut ``entries`` into lists of at most ``size``."""
    return [entries[i : i + size] for i in range(0, len(entries), size)]


def _entries(value: object) -> list[str]:
    # an empty Lua table encodes as {}: treat any non-list as empty
    return [str(e) for e in value] if isinstance(value, list) else []


def _queued(connection: redis.Redis, rq_connection: redis.Redis, keys: Keys) -> dict[str, int]:
    """The lengths of the namespace's rq queues on their own Redis (results and every sink)."""
    sinks = sorted(
        m.decode() if isinstance(m, bytes) else str(m) for m in _smembers(connection, keys)
    )
    with rq_connection.pipeline(transaction=False) as pipe:
        pipe.llen(Keys.rq_queue(keys.results_queue))
        for sink in sinks:
            pipe.llen(Keys.rq_queue(keys.sink_queue(sink)))
        lengths = pipe.execute()
    return dict(zip(["results", *sinks], (int(n) for n in lengths), strict=True))


def _smembers(connection: redis.Redis, keys: Keys) -> set[Any]:
    members: set[Any] = connection.smembers(keys.sinks)
    return members


def pump_once(
    connection: redis.Redis,
    keys: Keys,
    config: PumpConfig,
    rq_connection: redis.Redis | None = None,
) -> PumpResult:
    """One pump: take due entries, enqueue them as batches in one pipeline (sync; rq is sync).

    ``rq_connection``: the Redis of the rq queues when it is not ``connection``."""
    call = functions.pump(
        keys,
        config.max_take,
        int(config.visibility * 1000),
        int(config.sink_visibility * 1000),
        config.max_queued,
        None if rq_connection is None else _queued(connection, rq_connection, keys),
    )
    reply = functions.run_sync(connection, call)
    connection = connection if rq_connection is None else rq_connection  # rq's from here on
    results = _entries(reply.get("results"))
    sinks_reply = reply.get("sinks")
    sinks = {
        str(name): _entries(entries)
        for name, entries in (sinks_reply.items() if isinstance(sinks_reply, dict) else [])
    }
    count = 0
    with connection.pipeline(transaction=False) as pipe:
        if results:
            queue = Queue(keys.results_queue, connection=connection)
            jobs = [
                Queue.prepare_data(
                    RESULTS_TASK,
                    args=(keys.namespace, batch),
                    job_id=keys.batch_job_id("results", uuid.uuid4().hex),
                    retry=Retry(max=len(RESULTS_RETRY), interval=RESULTS_RETRY),
                    result_ttl=RESULT_TTL,
                    failure_ttl=FAILURE_TTL,
                    description=f"record {len(batch)} results",
                )
                for batch in batches(results, config.batch_size)
            ]
            queue.enqueue_many(jobs, pipeline=pipe)
            count += len(jobs)
        for sink, entries in sinks.items():
            queue = Queue(keys.sink_queue(sink), connection=connection)
            jobs = [
                Queue.prepare_data(
                    SINK_TASK,
                    args=(keys.namespace, sink, batch),
                    job_id=keys.batch_job_id(sink, uuid.uuid4().hex),
                    retry=Retry(max=len(config.sink_retry), interval=list(config.sink_retry)),
                    result_ttl=RESULT_TTL,
                    failure_ttl=FAILURE_TTL,
                    description=f"{sink}: write {len(batch)} jobs",
                )
                for batch in batches(entries, config.batch_size)
            ]
            queue.enqueue_many(jobs, pipeline=pipe)
            count += len(jobs)
        pipe.execute()
    return PumpResult(
        results=len(results),
        sinks=sum(len(e) for e in sinks.values()),
        batches=count,
        more=bool(reply.get("more")),
    )


class PumpLoop:
    """A pod's pump: runs ``pump_once`` whenever woken, and again soon while entries are due.

    Off the socket path (runners are acknowledged as soon as their outcome is recorded). Woken
    after each recorded result and by the pod's tick when the outbox has due entries; a short
    gather delay lets one pump carry a burst of results. rq is synchronous, hence the thread.
    """

    GATHER = 0.01  # s between a wake-up and the pump
    RETRY = 0.05  # s between pumps while due entries wait (queues full, or a full take)

    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys,
        config: PumpConfig,
        stopped: Callable[[], bool],
        rq_connection: redis.Redis | None = None,
        on_pump: Callable[[PumpResult], None] | None = None,
    ) -> None:
        self._connection, self._keys, self._config = connection, keys, config
        self._on_pump = on_pump  # told each pump's counts (the pod's metrics)
        self._rq_connection = rq_connection
        self._stopped = stopped
        self._wanted = asyncio.Event()

    def wake(self) -> None:
        self._wanted.set()

    async def run(self) -> None:
        while not self._stopped():
            await self._wanted.wait()
            await asyncio.sleep(self.GATHER)
            self._wanted.clear()
            try:
                result = await asyncio.to_thread(
                    pump_once, self._connection, self._keys, self._config, self._rq_connection
                )
            except redis.RedisError as exc:  # entries stay due: the next tick wakes us again
                log.warning("results pump failed: %s", exc)
                continue
            except Exception:  # never let the pump die: results would wait for a restart
                log.exception("results pump failed")
                continue
            if self._on_pump is not None:
                self._on_pump(result)
            if result.more:
                await asyncio.sleep(self.RETRY)
                self._wanted.set()
