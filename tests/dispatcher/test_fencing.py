"""Fencing and idempotency (PROTOCOL.md rules 3, 4 and 5): job id + attempt + runner decide."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.dispatcher.support import (
    SPEC,
    assert_usable,
    cancel,
    complete,
    expect_ack,
    expect_cancel,
    job_rec,
    new_job_id,
    queued_results,
    ready_and_waiting,
    runner_core,
    start_job,
    state_of,
    submit,
    take_job,
)
from tests.podkit import add_runner, connect

TERMINALS = {
    "completed": {"exit_code": 0, "results": {"k": 1}, "stdout": "late"},
    "failed": {"error": "late failure", "exit_code": 2},
    "canceled": {},
}


async def running_job(pod, settings, rclient, keys, name="r1", **submit_args):
    """A runner connected to ``pod`` with a job it has started (running, acknowledged)."""
    token = add_runner(settings, name, [SPEC])
    runner = await connect(pod, name, token)
    await ready_and_waiting(runner, rclient, keys)
    job_id = submit(rclient, keys, **submit_args)
    job = await runner.expect("job")
    assert job["job"] == job_id
    await start_job(runner, job)
    return runner, job


# -- unknown jobs -----------------------------------------------------------------------------


@pytest.mark.parametrize("event", ["running", "heartbeat"])
async def test_running_or_heartbeat_for_an_unknown_job_is_answered_cancel_lease_lost(
    pod, settings, rclient, keys, event
):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    before = runner_core(rclient, keys, "r1")
    ghost = new_job_id()
    await runner.send(event, job=ghost, attempt=7)
    await expect_cancel(runner, ghost, 7, "lease_lost")
    assert rclient.exists(keys.job(ghost)) == 0
    assert runner_core(rclient, keys, "r1") == before
    await assert_usable(runner, rclient, keys)


@pytest.mark.parametrize("event", sorted(TERMINALS))
async def test_terminal_for_an_unknown_job_is_acknowledged_with_its_id(
    pod, settings, rclient, keys, event
):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    before = runner_core(rclient, keys, "r1")
    ghost = new_job_id()
    await runner.send(event, job=ghost, attempt=1, **TERMINALS[event])
    await expect_ack(runner, ghost, event)
    assert rclient.exists(keys.job(ghost)) == 0
    assert queued_results(rclient, keys) == []
    assert runner_core(rclient, keys, "r1") == before
    await assert_usable(runner, rclient, keys)


# -- foreign and stale attempts --------------------------------------------------------------


async def test_messages_for_another_runners_job_change_nothing(pod, settings, rclient, keys):
    owner, job = await running_job(pod, settings, rclient, keys, name="owner")
    job_id = job["job"]
    intruder = await connect(pod, "intruder", add_runner(settings, "intruder", [SPEC]))
    before = state_of(rclient, keys, job_id, "owner")
    intruder_before = runner_core(rclient, keys, "intruder")

    for event in ("running", "heartbeat"):
        await intruder.send(event, job=job_id, attempt=1)
        await expect_cancel(intruder, job_id, 1, "lease_lost")
    for event, fields in TERMINALS.items():
        await intruder.send(event, job=job_id, attempt=1, **fields)
        await expect_ack(intruder, job_id, event)

    assert state_of(rclient, keys, job_id, "owner") == before
    assert runner_core(rclient, keys, "intruder") == intruder_before
    await owner.silent(0.2)  # the owner is not disturbed
    await owner.send("heartbeat", job=job_id, attempt=1)
    await expect_ack(owner, job_id, "heartbeat")
    await complete(owner, job, exit_code=0, results={"by": "owner"})
    assert job_rec(rclient, keys, job_id)["results"] == '{"by":"owner"}'


async def test_messages_of_a_lost_attempt_change_nothing(launch, settings, rclient, keys):
    """Attempt 1 lost its start deadline and attempt 2 went to another runner."""
    pod = await launch(dataclasses.replace(settings, start_timeout=0.3))
    old = await connect(pod, "old", add_runner(settings, "old", [SPEC]))
    new = await connect(pod, "new", add_runner(settings, "new", [SPEC]))
    await ready_and_waiting(old, rclient, keys)
    job_id = submit(rclient, keys)
    assert (await old.expect("job"))["attempt"] == 1
    await new.send("ready", poll_timeout=10)
    await expect_cancel(old, job_id, 1, "lease_lost", timeout=3)
    job2 = await new.expect("job", timeout=3)
    assert (job2["job"], job2["attempt"]) == (job_id, 2)
    before = state_of(rclient, keys, job_id, "new")
    assert (before["job"]["status"], before["job"]["runner"]) == ("claimed", "new")

    for event in ("running", "heartbeat"):
        await old.send(event, job=job_id, attempt=1)
        await expect_cancel(old, job_id, 1, "lease_lost")
    for event, fields in TERMINALS.items():
        await old.send(event, job=job_id, attempt=1, **fields)
        await expect_ack(old, job_id, event)

    after = state_of(rclient, keys, job_id, "new")
    assert after["job"] == before["job"]
    assert after["runner"] == before["runner"]
    assert after["results"] == before["results"] == []
    await start_job(new, job2)
    await complete(new, job2)
    assert job_rec(rclient, keys, job_id)["status"] == "completed"


async def test_a_wrong_attempt_number_for_ones_own_job_changes_nothing(
    pod, settings, rclient, keys
):
    runner, job = await running_job(pod, settings, rclient, keys)
    job_id = job["job"]
    before = state_of(rclient, keys, job_id, "r1")
    await runner.send("running", job=job_id, attempt=2)
    await expect_cancel(runner, job_id, 2, "lease_lost")
    await runner.send("heartbeat", job=job_id, attempt=5)
    await expect_cancel(runner, job_id, 5, "lease_lost")
    await runner.send("completed", job=job_id, attempt=2, exit_code=0, results=None)
    await expect_ack(runner, job_id, "completed")
    assert state_of(rclient, keys, job_id, "r1") == before
    await runner.send("heartbeat", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "heartbeat")


@pytest.mark.parametrize("event", ["running", "heartbeat", "completed"])
async def test_a_stale_attempt_message_does_not_detach_the_current_attempt(
    pod, settings, rclient, keys, event
):
    runner, job = await running_job(pod, settings, rclient, keys)
    job_id = job["job"]
    fields = {"exit_code": 0, "results": None} if event == "completed" else {}
    await runner.send(event, job=job_id, attempt=9, **fields)
    await runner.recv()  # the cancel (lease_lost, attempt 9) or the ack
    assert job_rec(rclient, keys, job_id)["status"] == "running"
    assert cancel(rclient, keys, job_id)
    # rule 5: the cancel of the attempt still in flight is pushed
    await expect_cancel(runner, job_id, 1, "canceled", timeout=0.6)


# -- duplicates and races with the producer --------------------------------------------------


@pytest.mark.parametrize("event", sorted(TERMINALS))
async def test_duplicate_terminal_is_acknowledged_again_and_records_nothing_new(
    pod, settings, rclient, keys, event
):
    runner, job = await running_job(pod, settings, rclient, keys)
    job_id = job["job"]
    await runner.send(event, job=job_id, attempt=1, **TERMINALS[event])
    await expect_ack(runner, job_id, event)
    first = state_of(rclient, keys, job_id, "r1")
    assert first["job"]["status"] == event
    assert first["results"] == [f"{job_id}:1"]

    await runner.send(event, job=job_id, attempt=1, **TERMINALS[event])
    await expect_ack(runner, job_id, event)
    # a different terminal message for the same attempt: acknowledged, first one wins
    other = "failed" if event == "completed" else "completed"
    await runner.send(other, job=job_id, attempt=1, **TERMINALS[other])
    await expect_ack(runner, job_id, other)
    await asyncio.sleep(0.1)
    assert state_of(rclient, keys, job_id, "r1") == first
    await assert_usable(runner, rclient, keys)


@pytest.mark.parametrize("event", ["completed", "failed"])
async def test_terminal_after_producer_cancel_is_acknowledged_and_the_job_stays_canceled(
    pod, settings, rclient, keys, event
):
    runner, job = await running_job(pod, settings, rclient, keys)
    job_id = job["job"]
    assert cancel(rclient, keys, job_id)
    await expect_cancel(runner, job_id, 1, "canceled", timeout=2)
    canceled = job_rec(rclient, keys, job_id)
    assert canceled["status"] == "canceled"
    await runner.send(event, job=job_id, attempt=1, **TERMINALS[event])
    await expect_ack(runner, job_id, event)
    rec = job_rec(rclient, keys, job_id)
    assert rec == canceled
    assert "exit_code" not in rec
    assert runner_core(rclient, keys, "r1")["job"] == ""
    await assert_usable(runner, rclient, keys)


async def test_running_after_producer_cancel_is_answered_cancel_canceled(
    pod, settings, rclient, keys
):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    assert cancel(rclient, keys, job_id)
    await expect_cancel(runner, job_id, 1, "canceled", timeout=2)  # pushed
    await runner.send("running", job=job_id, attempt=job["attempt"])
    await expect_cancel(runner, job_id, 1, "canceled")
    rec = job_rec(rclient, keys, job_id)
    assert rec["status"] == "canceled"
    assert not rec.get("started")
    await runner.send("canceled", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "canceled")
    assert job_rec(rclient, keys, job_id)["status"] == "canceled"
    await assert_usable(runner, rclient, keys)


async def test_heartbeat_after_producer_cancel_is_answered_cancel_canceled(
    pod, settings, rclient, keys
):
    runner, job = await running_job(pod, settings, rclient, keys)
    job_id = job["job"]
    assert cancel(rclient, keys, job_id)
    await expect_cancel(runner, job_id, 1, "canceled", timeout=2)
    await runner.send("heartbeat", job=job_id, attempt=1)
    await expect_cancel(runner, job_id, 1, "canceled")
    assert job_rec(rclient, keys, job_id)["status"] == "canceled"


@pytest.mark.parametrize("event", ["heartbeat", "running"])
async def test_message_after_the_runners_own_canceled_gets_a_protocol_cancel_reason(
    pod, settings, rclient, keys, event
):
    runner, job = await running_job(pod, settings, rclient, keys)
    job_id = job["job"]
    await runner.send("canceled", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "canceled")
    await runner.send(event, job=job_id, attempt=1)
    message = await runner.expect("cancel")
    assert (message["job"], message["attempt"]) == (job_id, 1)
    assert message["reason"] in ("lease_lost", "canceled"), message


async def test_heartbeat_after_completed_is_answered_cancel_lease_lost(
    pod, settings, rclient, keys
):
    runner, job = await running_job(pod, settings, rclient, keys)
    job_id = job["job"]
    await complete(runner, job)
    before = job_rec(rclient, keys, job_id)
    await runner.send("heartbeat", job=job_id, attempt=1)
    await expect_cancel(runner, job_id, 1, "lease_lost")
    assert job_rec(rclient, keys, job_id) == before


# -- completed versus a failure the server recorded -------------------------------------------


async def test_completed_replaces_a_failure_recorded_for_lease_expiry(
    launch, settings, rclient, keys
):
    pod = await launch(dataclasses.replace(settings, lease_timeout=0.4))
    runner, job = await running_job(pod, settings, rclient, keys, max_attempts=1)
    job_id = job["job"]
    await expect_cancel(runner, job_id, 1, "lease_lost", timeout=3)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["error"]) == ("failed", "lease expired")
    await runner.send(
        "completed", job=job_id, attempt=1, exit_code=0, results={"late": True}, stdout="done"
    )
    await expect_ack(runner, job_id, "completed")
    rec = job_rec(rclient, keys, job_id)
    assert rec["status"] == "completed"
    assert (rec["exit_code"], rec["results"], rec["stdout"]) == ("0", '{"late":true}', "done")
    assert rec["error"] == ""
    # the replacing result goes to the result writers too, before the ack
    assert f"{job_id}:1" in queued_results(rclient, keys)


async def test_completed_does_not_replace_a_failure_the_runner_reported(
    pod, settings, rclient, keys
):
    runner, job = await running_job(pod, settings, rclient, keys)
    job_id = job["job"]
    await runner.send("failed", job=job_id, attempt=1, error="tests failed", exit_code=1)
    await expect_ack(runner, job_id, "failed")
    before = job_rec(rclient, keys, job_id)
    await runner.send("completed", job=job_id, attempt=1, exit_code=0, results=None)
    await expect_ack(runner, job_id, "completed")
    assert job_rec(rclient, keys, job_id) == before
    assert before["status"] == "failed"


async def test_completed_does_not_replace_a_job_timeout_cancel(launch, settings, rclient, keys):
    pod = await launch(dataclasses.replace(settings, timeout_grace=0.1))
    runner, job = await running_job(pod, settings, rclient, keys, timeout=0.3)
    job_id = job["job"]
    await expect_cancel(runner, job_id, 1, "timeout", timeout=3)
    before = job_rec(rclient, keys, job_id)
    assert before["status"] == "canceled"
    await runner.send("completed", job=job_id, attempt=1, exit_code=0, results=None)
    await expect_ack(runner, job_id, "completed")
    assert job_rec(rclient, keys, job_id) == before
