"""work_until_stopped: a writer whose rq worker quit on a Redis error starts a new one once Redis
answers; a stop request or burst mode ends it. Driven with stand-in workers that end the way rq's
worker does (returning after "unhandled exception, quitting", raising from its teardown), and a
ping that fails a given number of times; no clock, no Redis needed for the loop itself. The real
thing under a real failover: tests/scaleout/test_failover.py."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from rq.exceptions import StopRequested

from worker_bridge.resilient import RETRY_MAX, RETRY_MIN, Worker, work_until_stopped


class Ends(Worker):
    """A worker whose ``work`` ends as scripted: 'quit' (returns), 'raise' (teardown error),
    'stop' (a SIGTERM was handled), 'stop-raise' (StopRequested escapes)."""

    script: list[str] = []

    def __init__(self) -> None:  # no rq setup: only ``work`` and the stop flag are used
        self.stop_signalled = False

    def work(self, **options: Any) -> bool:  # type: ignore[override]
        how = self.script.pop(0)
        if how == "raise":
            raise redis.ConnectionError("Connection refused")
        if how == "stop":
            self.stop_signalled = True
        if how == "stop-raise":
            raise StopRequested()
        return True


def pinger(failures: int) -> Any:
    left = [failures]

    def ping() -> bool:
        if left[0]:
            left[0] -= 1
            raise redis.ConnectionError("No master found for 'dispatch'")
        return True

    return ping


def test_a_worker_that_quit_on_an_error_is_replaced_once_redis_answers() -> None:
    Ends.script = ["quit", "raise", "stop"]
    slept: list[float] = []
    runs = work_until_stopped(Ends, {"burst": False}, pinger(3), slept.append)
    assert runs == 3
    assert slept == [RETRY_MIN, RETRY_MIN * 2, RETRY_MIN * 4, RETRY_MIN * 8, RETRY_MIN]


def test_the_back_off_is_capped() -> None:
    Ends.script = ["quit", "stop"]
    slept: list[float] = []
    work_until_stopped(Ends, {}, pinger(10), slept.append)
    assert max(slept) == RETRY_MAX and slept[-1] == RETRY_MAX


@pytest.mark.parametrize("how", ["stop", "stop-raise"])
def test_a_stop_request_ends_it(how: str) -> None:
    Ends.script = [how]
    assert work_until_stopped(Ends, {}, pinger(0), lambda s: None) == 1


def test_burst_mode_runs_once() -> None:
    Ends.script = ["quit"]
    assert work_until_stopped(Ends, {"burst": True}, pinger(0), lambda s: None) == 1


def test_a_stop_while_waiting_for_redis_ends_it() -> None:
    Ends.script = ["quit"]

    def sleep(seconds: float) -> None:
        raise StopRequested()  # rq's SIGTERM handler, still installed, raises in the wait

    assert work_until_stopped(Ends, {}, pinger(5), sleep) == 1
