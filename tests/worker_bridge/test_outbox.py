"""Every kind of terminal outcome reaches the results outbox in the call that records it, then
`processed` (or one `recorded` event) through a pump and a real rq worker; nothing is lost when the
pod or the writer dies in between. Real Redis, real rq workers; no pod needed unless said."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import redis
from rq import Queue, SimpleWorker

from dispatcher import functions
from dispatcher.keys import Keys
from dispatcher.results import PumpConfig, pump_once
from dispatcher.settings import Settings
from tests.dispatcher.support import RClient, eventually
from tests.jobflow import POD, SPEC, FakePod
from tests.podkit import start_pod


def submit(rclient: RClient, keys: Keys, timeout: float = 60) -> str:
    payload = json.dumps({"command": ["true"]})
    return functions.run_sync(rclient, functions.submit(keys, "", SPEC, payload, 0, timeout, 1))


def tick(rclient: RClient, keys: Keys) -> dict[str, object]:
    return functions.run_sync(rclient, functions.tick(keys, POD, 60_000))


def wait_until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)


def run_writer(raw: redis.Redis, keys: Keys) -> None:
    """A real rq worker (in this process) in burst mode on the namespace's results queue."""
    queue = Queue(keys.results_queue, connection=raw)
    SimpleWorker([queue], connection=raw).work(burst=True, logging_level="WARNING")


def outbox(rclient: RClient, keys: Keys) -> list[str]:
    return list(rclient.zrange(keys.outbox, 0, -1))


def recorded(rclient: RClient, keys: Keys, job_id: str) -> list[str]:
    return [
        f["status"]
        for _, f in rclient.xrange(keys.events)
        if f.get("job") == job_id and f.get("event") == "recorded"
    ]


def test_every_kind_of_outcome_reaches_the_outbox_then_the_writers(
    rclient: RClient, raw: redis.Redis, keys: Keys
) -> None:
    pod = FakePod(rclient, keys)
    outcome: dict[str, str] = {}
    for status in ("completed", "failed", "canceled"):  # reported by the runner
        submit(rclient, keys)
        job_id, _ = pod.run_next(status)
        outcome[job_id] = status
    canceled = submit(rclient, keys)  # a producer's cancel (pending: attempt 0)
    assert functions.run_sync(rclient, functions.cancel(keys, canceled))
    outcome[canceled] = "canceled"

    # the reaper: a lease that expires (no retry left), and a job past timeout + grace
    rclient.hset(keys.config, mapping={"lease_timeout": 0.05, "timeout_grace": 0})
    lapsed = submit(rclient, keys)
    pod.take()
    timed_out = submit(rclient, keys, timeout=0.05)
    pod.take()
    time.sleep(0.1)  # part of the scenario: both deadlines pass
    tick(rclient, keys)
    assert rclient.hget(keys.job(lapsed), "status") == "failed"
    assert rclient.hget(keys.job(timed_out), "cancel_reason") == "timeout"
    outcome[lapsed], outcome[timed_out] = "failed", "canceled"

    assert sorted(outbox(rclient, keys)) == sorted(
        f"{job}:{rclient.hget(keys.job(job), 'attempt')}" for job in outcome
    )
    assert pump_once(raw, keys, PumpConfig()).results == len(outcome)
    run_writer(raw, keys)
    for job_id, status in outcome.items():
        final = rclient.hget(keys.job(job_id), "status")
        if status == "completed":
            assert final == "processed"
        else:
            assert (final, recorded(rclient, keys, job_id)) == (status, [status])
    assert outbox(rclient, keys) == []


def test_a_late_completed_that_replaces_a_lease_failure_reaches_processed(
    rclient: RClient, raw: redis.Redis, keys: Keys
) -> None:
    """Today's bug: a failed enqueue on this path was answered `duplicate` and never retried.
    Now the override writes its own outbox entry in the finish call."""
    pod = FakePod(rclient, keys)
    rclient.hset(keys.config, "lease_timeout", 0.05)
    job_id = submit(rclient, keys)
    _, attempt = pod.take()
    time.sleep(0.1)  # part of the scenario: the lease passes
    tick(rclient, keys)
    assert rclient.hget(keys.job(job_id), "status") == "failed"
    pump_once(raw, keys, PumpConfig())
    run_writer(raw, keys)  # the failure is recorded first
    assert recorded(rclient, keys, job_id) == ["failed"]
    assert outbox(rclient, keys) == []
    reply = pod.finish(job_id, attempt, "completed")
    assert (reply["result"], reply["override"]) == ("recorded", True)
    assert outbox(rclient, keys) == [f"{job_id}:{attempt}"]
    pump_once(raw, keys, PumpConfig())
    run_writer(raw, keys)
    assert rclient.hget(keys.job(job_id), "status") == "processed"


def test_a_batch_lost_after_the_pump_is_handed_out_again(
    rclient: RClient, raw: redis.Redis, keys: Keys
) -> None:
    """A pod that dies after the pump took its entries, or a writer that died holding the batch:
    the entries come due again after the visibility timeout and another batch records them."""
    pod = FakePod(rclient, keys)
    submit(rclient, keys)
    job_id, attempt = pod.run_next("completed")
    config = PumpConfig(visibility=0.3)
    assert pump_once(raw, keys, config).batches == 1
    # the writer that took the batch dies with it: the batch leaves the queue, never recorded
    assert raw.lpop(Keys.rq_queue(keys.results_queue)) is not None
    assert pump_once(raw, keys, config).batches == 0  # hidden while the lost batch "holds" it
    wait_until(lambda: pump_once(raw, keys, config).batches == 1, "the entry handed out again")
    run_writer(raw, keys)
    assert rclient.hget(keys.job(job_id), "status") == "processed"
    assert outbox(rclient, keys) == [] and attempt == 1


def test_the_pump_stops_adding_while_the_writers_are_behind(
    rclient: RClient, raw: redis.Redis, keys: Keys
) -> None:
    """Back-pressure: entries wait in the outbox (not in rq) while max_queued batches wait."""
    pod = FakePod(rclient, keys)
    for _ in range(5):
        submit(rclient, keys)
        pod.run_next("completed")
    config = PumpConfig(batch_size=1, max_take=2, max_queued=2)
    first = pump_once(raw, keys, config)
    assert (first.batches, first.more) == (2, True)
    second = pump_once(raw, keys, config)
    assert (second.batches, second.more) == (0, True)  # two batches wait: add nothing
    run_writer(raw, keys)
    while pump_once(raw, keys, config).batches:
        run_writer(raw, keys)
    assert outbox(rclient, keys) == []
    assert rclient.hget(keys.stats, "processed") == "5"


async def test_outcomes_recorded_while_no_pod_ran_are_pumped_by_the_next_pod(
    rclient: RClient, raw: redis.Redis, keys: Keys, settings: Settings
) -> None:
    """Every pod died between the outcomes and the pump: a pod that starts later finds them on
    its first tick and queues them."""
    pod = FakePod(rclient, keys)
    for _ in range(3):
        submit(rclient, keys)
        pod.run_next("completed")
    queue = Queue(keys.results_queue, connection=raw)
    assert queue.count == 0
    running = await start_pod(settings)
    try:
        await eventually(lambda: queue.count == 1, 5.0, what="the new pod's pump")
        assert len(queue.jobs[0].args[1]) == 3
    finally:
        await running.stop()
