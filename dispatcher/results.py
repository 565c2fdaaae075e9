"""Hand terminal results to the result writers: one rq job per job attempt, with a fixed id.

The id is deterministic (namespace, job id, attempt), so a pod that dies between recording a
result and enqueueing it, and the runner's resend, enqueue the same rq job at most once; the task
itself is a compare-and-set, safe to run twice.
"""

from __future__ import annotations

import redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError

from dispatcher.keys import Keys

TASK = "worker_bridge.tasks.process_result"
RETRY_INTERVALS = [1, 5, 30, 60, 300]
RESULT_TTL = 24 * 3600
FAILURE_TTL = 7 * 24 * 3600


def results_queue(connection: redis.Redis, keys: Keys) -> Queue:
    """The namespace's results queue on a *sync* redis-py connection (rq is synchronous)."""
    return Queue(keys.results_queue, connection=connection)


def enqueue_result(queue: Queue, keys: Keys, job_id: str, attempt: int, late: bool = False) -> bool:
    """Queue the result task of one attempt; False when it was queued before."""
    try:
        queue.enqueue_call(
            TASK,
            args=(keys.namespace, job_id, attempt),
            job_id=keys.result_job_id(job_id, attempt, late),
            retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS),
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            unique=True,
        )
    except DuplicateJobError:
        return False
    return True
