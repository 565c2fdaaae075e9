"""A writer that outlives a Redis outage (a failover, a restart) instead of exiting.

rq's worker survives a lost connection only inside its blocking pop: an error anywhere else (its
heartbeat, its bookkeeping after a batch, its scheduler) makes ``work()`` log "found an unhandled
exception, quitting" and return, and its teardown then fails too. On Sentinel or Cluster, a
primary's failover is seconds of such errors, after which the client finds the new primary on its
own; a writer that exited would need a restart by hand. So ``work_until_stopped`` starts a fresh
worker (a new rq name; the old one's registration expires) once Redis answers again, with
back-off, until a stop was asked for (SIGTERM/SIGINT, or burst mode).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import redis
from rq import SimpleWorker
from rq.exceptions import StopRequested

log = logging.getLogger(__name__)

RETRY_MIN = 0.5  # s before the first new worker
RETRY_MAX = 10.0


class Worker(SimpleWorker):
    """rq's SimpleWorker that remembers being told to stop (rq's own flag is set only when the
    signal arrives while it is busy)."""

    stop_signalled = False

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signalled = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]


def work_until_stopped(
    make_worker: Callable[[], Worker],
    work: dict[str, Any],
    ping: Callable[[], object],
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run ``make_worker().work(**work)``; while it ends for any reason but a stop request (or
    burst mode), wait until ``ping`` succeeds and run a new one. Returns how many workers ran."""
    delay = RETRY_MIN
    runs = 0
    while True:
        worker = make_worker()
        runs += 1
        try:
            worker.work(**work)
        except redis.RedisError as exc:  # its teardown, when Redis is still away
            log.warning("writer: %s", exc)
        except StopRequested:
            return runs
        if worker.stop_signalled or work.get("burst"):
            return runs
        log.warning("writer: rq's worker quit on an error; a new one starts once Redis answers")
        try:
            while True:
                sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                try:
                    ping()
                    break
                except redis.RedisError as exc:
                    log.warning("writer: Redis does not answer yet (%s)", exc)
        except StopRequested:  # SIGTERM while waiting (rq's handler is still installed)
            return runs
        if worker.stop_signalled:
            return runs
        delay = RETRY_MIN
