"""Retries by failure class (issue 12): real pods, runners speaking the protocol frame by frame.

``retries`` counts attempts the runner reports ``failed`` (the command failed); ``max_attempts``
keeps counting infrastructure failures (lease lost, runner gone). A retried attempt is no result:
nothing reaches the results outbox or the done channel until the job is really final. Every ended
attempt is in the record's history (``attempts``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher import functions
from dispatcher.client import AsyncClient, Client
from dispatcher.errors import InvalidInput
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.dispatcher import groupkit
from tests.dispatcher.support import (
    SPEC,
    eventually,
    expect_ack,
    job_events,
    new_job_id,
    queued_results,
    start_job,
    take_job,
    until_waiting,
)
from tests.podkit import RawRunner, add_runner, connect

CMD = {"command": ["false"]}


def fast(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, reconcile_interval=0.05, **changes)


async def fail(runner: RawRunner, job: dict[str, Any], exit_code: int = 3) -> None:
    await runner.send(
        "failed",
        job=job["job"],
        attempt=job["attempt"],
        exit_code=exit_code,
        error=f"exit code {exit_code}",
    )
    await expect_ack(runner, job["job"], "failed")


async def complete(runner: RawRunner, job: dict[str, Any]) -> None:
    await runner.send("completed", job=job["job"], attempt=job["attempt"], exit_code=0)
    await expect_ack(runner, job["job"], "completed")


def names(rclient: Any, keys: Keys, job_id: str) -> list[str]:
    return [e["event"] for e in job_events(rclient, keys, job_id)]


def brief(attempts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (a["attempt"], a["runner"], a["status"], a["exit_code"], a["error"], a["retried"])
        for a in attempts
    ]


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings) as c:
        yield c


async def test_failed_attempt_is_retried_then_completes(launch, settings, rclient, keys, client):
    pod = await launch(settings)
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = client.submit(SPEC, CMD, retries=2)

    first = await take_job(runner)
    await start_job(runner, first)
    await fail(runner, first)
    # not final: the job is queued again, no result is out, `wait` does not return it
    record = client.get(job_id)
    assert (record["status"], record["retries_used"], record["retries"]) == ("pending", 1, 2)
    assert queued_results(rclient, keys) == []
    with pytest.raises(TimeoutError):
        client.wait(job_id, timeout=0)

    second = await take_job(runner)
    assert (second["job"], second["attempt"]) == (job_id, 2)
    await start_job(runner, second)
    await complete(runner, second)

    record = client.get(job_id)
    assert (record["status"], record["attempt"], record["exit_code"]) == ("completed", 2, 0)
    assert record["retries_used"] == 1
    assert brief(record["attempts"]) == [
        (1, "r1", "failed", 3, "exit code 3", True),
        (2, "r1", "completed", 0, None, False),
    ]
    for entry in record["attempts"]:
        assert entry["claimed"] <= entry["started"] <= entry["finished"]
    assert queued_results(rclient, keys) == [f"{job_id}:2"]  # only the final attempt
    assert names(rclient, keys, job_id) == [
        "submitted",
        "claimed",
        "running",
        "retry",
        "claimed",
        "running",
        "completed",
    ]


async def test_retries_exhausted_the_last_failure_is_final(launch, settings, rclient, keys):
    pod = await launch(settings)
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    async with AsyncClient(settings) as producer:
        job_id = await producer.submit(SPEC, CMD, retries=1)
        for attempt in (1, 2):
            job = await take_job(runner)
            assert job["attempt"] == attempt
            await start_job(runner, job)
            await fail(runner, job, exit_code=10 + attempt)
        record = await producer.wait(job_id, timeout=10)  # failed is final: wait returns it
    assert (record["status"], record["exit_code"], record["error"]) == (
        "failed",
        12,
        "exit code 12",
    )
    assert (record["retries_used"], record["retries"]) == (1, 1)
    assert brief(record["attempts"]) == [
        (1, "r1", "failed", 11, "exit code 11", True),
        (2, "r1", "failed", 12, "exit code 12", False),
    ]
    assert queued_results(rclient, keys) == [f"{job_id}:2"]


async def test_a_lost_lease_counts_max_attempts_not_retries(launch, settings, rclient, keys):
    pod = await launch(fast(settings, lease_timeout=0.5))
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    with Client(settings) as client:
        job_id = client.submit(SPEC, CMD, retries=3, max_attempts=1)
        job = await take_job(runner)
        await start_job(runner, job)
        await runner.close()  # the runner is gone: no heartbeat, the lease runs out
        await eventually(lambda: client.get(job_id)["status"] == "failed", timeout=10)
        record = client.get(job_id)
    assert (record["error"], record["retries_used"]) == ("lease expired", 0)
    assert brief(record["attempts"]) == [(1, "r1", "failed", None, "lease expired", False)]


async def test_retried_attempts_do_not_use_up_max_attempts(launch, settings, rclient, keys):
    """max_attempts=2, retries=1: a command failure (retried), then two lost leases: the first
    lost lease is re-queued (one infrastructure failure of two allowed), the second is final."""
    pod = await launch(fast(settings, lease_timeout=0.5))
    token = add_runner(settings, "r1", [SPEC])
    with Client(settings) as client:
        job_id = client.submit(SPEC, CMD, retries=1, max_attempts=2)
        runner = await connect(pod, "r1", token)
        job = await take_job(runner)
        await start_job(runner, job)
        await fail(runner, job)
        for attempt in (2, 3):
            job = await take_job(runner)
            assert job["attempt"] == attempt
            await start_job(runner, job)
            await runner.close()
            if attempt == 2:
                await eventually(lambda: client.get(job_id)["status"] == "pending", timeout=10)
                runner = await connect(pod, "r1", token)
        await eventually(lambda: client.get(job_id)["status"] == "failed", timeout=10)
        record = client.get(job_id)
    assert brief(record["attempts"]) == [
        (1, "r1", "failed", 3, "exit code 3", True),
        (2, "r1", "lost", None, "lease expired", False),
        (3, "r1", "failed", None, "lease expired", False),
    ]
    assert (record["error"], record["retries_used"]) == ("lease expired", 1)


async def test_retry_delay_is_honoured(launch, settings, rclient, keys, client):
    pod = await launch(fast(settings))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = client.submit(SPEC, CMD, retries=1, retry_delay=1.0)
    job = await take_job(runner)
    await start_job(runner, job)
    before_failure = time.monotonic()  # not later than the server's failure time
    await fail(runner, job)

    record = client.get(job_id)
    assert (record["status"], record["runner"]) == ("pending", None)
    assert record["retry_at"] is not None
    assert rclient.zscore(keys.delayed, job_id) is not None
    await runner.send("ready", poll_timeout=10)
    await until_waiting(rclient, keys, "r1")  # idle, yet not given the job before its time
    again = await runner.expect("job", timeout=10)
    waited = time.monotonic() - before_failure
    assert (again["job"], again["attempt"]) == (job_id, 2)
    assert waited >= 0.95, f"retried {waited:.2f} s after the failure, before retry_delay"
    assert client.get(job_id)["retry_at"] is None
    assert rclient.zscore(keys.delayed, job_id) is None


async def test_the_pod_that_schedules_a_retry_releases_it_when_due_not_at_a_sweep(
    launch, settings, rclient, keys, client
):
    """Sweeps come every 2 intervals (an hour here): the pod that recorded the failure sweeps
    when the retry is due (``Pod.sweep_at``)."""
    pod = await launch(dataclasses.replace(settings, reconcile_interval=1200.0, pod_ttl=3600.0))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = client.submit(SPEC, CMD, retries=1, retry_delay=0.3)
    job = await take_job(runner)
    await start_job(runner, job)
    await fail(runner, job)
    await runner.send("ready", poll_timeout=30)
    again = await runner.expect("job", timeout=10)
    assert (again["job"], again["attempt"]) == (job_id, 2)
    assert rclient.zscore(keys.delayed, job_id) is None


async def test_a_job_waiting_for_its_retry_can_be_canceled(launch, settings, rclient, keys):
    pod = await launch(fast(settings))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    with Client(settings) as client:
        job_id = client.submit(SPEC, CMD, retries=1, retry_delay=0.3)
        job = await take_job(runner)
        await start_job(runner, job)
        await fail(runner, job)
        assert client.cancel(job_id) is True
        assert rclient.zscore(keys.delayed, job_id) is None
        # well past the delay, ticks have run: the canceled job stays canceled, nobody gets it
        await runner.send("ready", poll_timeout=1)
        await runner.expect("no_job", timeout=5)
        record = client.get(job_id)
    assert (record["status"], record["retry_at"], record["attempt"]) == ("canceled", None, 1)
    assert brief(record["attempts"]) == [(1, "r1", "failed", 3, "exit code 3", True)]


async def test_a_canceled_attempt_is_not_retried(launch, settings, rclient, keys, client):
    pod = await launch(settings)
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = client.submit(SPEC, CMD, retries=2)
    job = await take_job(runner)
    await start_job(runner, job)
    await runner.send("canceled", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "canceled")
    record = client.get(job_id)
    assert (record["status"], record["retries_used"]) == ("canceled", 0)
    assert brief(record["attempts"]) == [
        (1, "r1", "canceled", None, "canceled by the runner", False)
    ]


async def test_a_resent_failure_of_a_retried_attempt_changes_nothing(
    launch, settings, rclient, keys, client
):
    """The runner lost the ack and sends its `failed` again: acknowledged, no second retry."""
    pod = await launch(settings)
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = client.submit(SPEC, CMD, retries=3, retry_delay=60)
    job = await take_job(runner)
    await start_job(runner, job)
    await fail(runner, job)
    before = client.get(job_id)
    await fail(runner, job)
    after = client.get(job_id)
    assert (after["retries_used"], len(after["attempts"])) == (1, 1)
    assert after == before


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"retries": -1}, ValueError),
        ({"retries": 101}, ValueError),
        ({"retries": 1.5}, TypeError),
        ({"retries": True}, TypeError),
        ({"retry_delay": -1}, ValueError),
        ({"retry_delay": math.nan}, ValueError),
        ({"retry_delay": 86401}, ValueError),
        ({"retry_delay": "5"}, TypeError),
    ],
)
def test_client_refuses_bad_retry_options_and_writes_nothing(
    settings, rclient, keys, options, error
):
    with Client(settings) as client, pytest.raises(error):
        client.submit(SPEC, CMD, **options)
    assert list(rclient.scan_iter(match=f"{keys.namespace}:*")) == []


@pytest.mark.parametrize(
    ("retries", "delay", "message"),
    [
        ("-1", "0", "invalid retries"),
        ("2.5", "0", "invalid retries"),
        ("x", "0", "invalid retries"),
        ("1", "-0.5", "invalid retry_delay"),
        ("1", "nan", "invalid retry_delay"),
        ("1", "86401", "invalid retry_delay"),
    ],
)
def test_the_function_refuses_bad_retry_options(rclient, keys, retries, delay, message):
    """Producers in other languages FCALL `submit` directly: the Lua side is the authority."""
    call = functions.submit(keys, "", SPEC, "{}", 0, 60, 1)
    bad = dataclasses.replace(call, args=(*call.args[:7], retries, delay))
    with pytest.raises(InvalidInput, match=message):
        functions.run_sync(rclient, bad)
    assert list(rclient.scan_iter(match=f"{keys.namespace}:*")) == []


def test_older_producers_without_retry_arguments_get_no_retries(rclient, keys):
    call = functions.submit(keys, "", SPEC, "{}", 0, 60, 1)
    old = dataclasses.replace(call, args=call.args[:7])  # ARGV as before retries existed
    job_id = functions.run_sync(rclient, old)
    record = rclient.hgetall(keys.job(job_id))
    assert (record["retries"], record["retry_delay"], record["retries_used"]) == ("0", "0", "0")


def test_an_idempotent_submit_compares_the_retry_options(settings, rclient, keys):
    job_id = new_job_id()
    with Client(settings) as client:
        assert client.submit(SPEC, CMD, job_id=job_id, retries=2, retry_delay=1.5) == job_id
        assert client.submit(SPEC, CMD, job_id=job_id, retries=2, retry_delay=1.5) == job_id
        with pytest.raises(InvalidInput, match="different content"):
            client.submit(SPEC, CMD, job_id=job_id, retries=3, retry_delay=1.5)
        with pytest.raises(InvalidInput, match="different content"):
            client.submit(SPEC, CMD, job_id=job_id, retries=2)


async def test_a_late_completed_replaces_the_lease_failure_in_the_history(
    launch, settings, rclient, keys, client
):
    """Rule 4's exception: the runner's `completed` replaces the server's lease-expiry failure of
    the same attempt; the history keeps one entry for that attempt, the runner's outcome."""
    pod = await launch(fast(settings, lease_timeout=0.5))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = client.submit(SPEC, CMD, retries=2, max_attempts=1)
    job = await take_job(runner)
    await start_job(runner, job)
    # no heartbeat: the lease runs out and the server fails the job (no retry: not the runner's)
    cancel = await runner.expect("cancel", timeout=10)
    assert cancel["reason"] == "lease_lost"
    failed = client.get(job_id)
    assert (failed["status"], failed["retries_used"]) == ("failed", 0)
    assert brief(failed["attempts"]) == [(1, "r1", "failed", None, "lease expired", False)]
    await complete(runner, job)
    record = client.get(job_id)
    assert (record["status"], record["exit_code"]) == ("completed", 0)
    assert brief(record["attempts"]) == [(1, "r1", "completed", 0, None, False)]


def test_a_retried_attempt_that_never_ran_leaves_max_attempts_as_it_was(rclient, keys):
    """max_attempts=1, retries=1: the runner reports `failed` straight from `claimed` (allowed,
    PROTOCOL rule 3), which is retried; the next attempt runs and its lease is lost. That is the
    first infrastructure failure of one allowed: final. (The retried attempt was never in `runs`,
    so taking it out of `runs` again must not buy an extra lease loss.)"""
    groupkit.live_pod(rclient, keys)
    conn = groupkit.connect(rclient, keys, "r1")
    assert groupkit.ready(rclient, keys, "r1", conn)["result"] == "idle"
    call = functions.submit(keys, "", SPEC, '{"command": ["false"]}', 0, 3600, 1, retries=1)
    job_id = functions.run_sync(rclient, call)
    groupkit.finish(rclient, keys, "r1", job_id, "failed")  # attempt 1, never `running`
    assert groupkit.ready(rclient, keys, "r1", conn)["attempt"] == 2
    assert functions.run_sync(rclient, functions.start(keys, "r1", job_id, 2))["result"] == "ok"
    rclient.hset(keys.job(job_id), "lease_deadline", 0)  # the runner went silent: lease passed
    rclient.zadd(keys.leases, {job_id: 0})
    reaped = functions.run_sync(rclient, functions.tick(keys, groupkit.POD, 600_000))["reaped"]
    assert reaped == [[job_id, "failed", 2]]
    record = rclient.hgetall(keys.job(job_id))
    assert (record["status"], record["error"], record["retries_used"]) == (
        "failed",
        "lease expired",
        "1",
    )
