"""The rq task that records one job attempt's terminal result (queued by pods and by cancel).

It runs under ``worker-bridge`` or a plain ``rq worker <namespace>:results`` and finds its Redis
connection through rq. Every step is a compare-and-set or idempotent, so rq's at-least-once
delivery (retries, a worker dying mid-task) never records anything twice:

- ``completed`` -> ``processed`` for that attempt (the Lua function also appends the event and
  publishes the job id on the done channel);
- a ``failed``/``canceled`` attempt gets one ``recorded`` event (the job hash remembers which
  attempt was recorded, in the same transaction as the XADD);
- a final job record gets its retention TTL (``DISPATCHER_JOB_RETENTION`` seconds, default 7 days;
  0 keeps records forever).
"""

from __future__ import annotations

import logging

import redis
from rq import get_current_job

from dispatcher import functions
from dispatcher.keys import Keys
from dispatcher.records import FINAL_STATUSES, text
from dispatcher.settings import Settings

log = logging.getLogger(__name__)

EVENTS_MAXLEN = 10_000
RECORDED_FIELD = "recorded_attempt"


def process_result(
    namespace: str, job_id: str, attempt: int, *, connection: redis.Redis | None = None
) -> str:
    """Record the result of ``job_id``'s ``attempt``; return the job's status afterwards.

    ``connection`` is for callers outside rq (tests, scripts); under rq it is the worker's.
    Returns '' when the job record does not exist (expired or never written).
    """
    conn = connection or _rq_connection()
    keys = Keys(namespace)
    status = functions.run_sync(conn, functions.processed(keys, job_id, int(attempt)))
    if status in ("failed", "canceled"):
        _record_once(conn, keys, job_id, int(attempt), status)
    if status in FINAL_STATUSES:
        retention = int(Settings.from_env().job_retention)
        if retention:
            conn.expire(keys.job(job_id), retention)
    log.info("job %s attempt %s: %s", job_id, attempt, status or "unknown job")
    return status


def _rq_connection() -> redis.Redis:
    job = get_current_job()
    if job is None:
        raise RuntimeError("process_result runs under an rq worker, or needs connection=")
    connection: redis.Redis = job.connection
    return connection


def _record_once(conn: redis.Redis, keys: Keys, job_id: str, attempt: int, status: str) -> None:
    """Append one ``recorded`` event for this attempt of a failed/canceled job, at most once."""
    job_key = keys.job(job_id)

    def record(pipe: redis.client.Pipeline) -> None:
        current, done = (text(v) for v in pipe.hmget(job_key, ["attempt", RECORDED_FIELD]))
        if current != str(attempt) or done == str(attempt):
            return  # a stale attempt, or recorded before
        seconds, micros = pipe.time()
        pipe.multi()
        pipe.hset(job_key, RECORDED_FIELD, str(attempt))
        pipe.xadd(
            keys.events,
            {
                "event": "recorded",
                "job": job_id,
                "attempt": str(attempt),
                "ts": str(seconds * 1000 + micros // 1000),
                "status": status,
            },
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )

    conn.transaction(record, job_key)
