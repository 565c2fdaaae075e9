"""Start deadline, lease expiry, job timeout and rule 1 (PROTOCOL.md rules 1 and 6).

Short timeouts, and a 0.05 s reconcile tick so deadlines are noticed quickly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from tests.dispatcher.support import (
    SPEC,
    assert_usable,
    eventually,
    expect_ack,
    expect_cancel,
    job_rec,
    lease,
    pending_ids,
    queued_results,
    ready_and_waiting,
    runner_rec,
    start_job,
    submit,
    take_job,
    until_pod,
)
from tests.podkit import add_runner, connect


def fast(settings, **changes):
    return dataclasses.replace(settings, reconcile_interval=0.05, **changes)


async def test_start_deadline_expiry_requeues_to_another_waiting_runner(
    launch, settings, rclient, keys
):
    pod = await launch(fast(settings, start_timeout=0.4))
    slow = await connect(pod, "slow", add_runner(settings, "slow", [SPEC]))
    spare = await connect(pod, "spare", add_runner(settings, "spare", [SPEC]))
    await ready_and_waiting(slow, rclient, keys)
    assigned = time.monotonic()  # before the submit, which assigns (and starts the deadline)
    job_id = submit(rclient, keys, max_attempts=1)
    assert (await slow.expect("job"))["attempt"] == 1
    await spare.send("ready", poll_timeout=10)

    job2 = await spare.expect("job", timeout=5)
    waited = time.monotonic() - assigned
    assert (job2["job"], job2["attempt"]) == (job_id, 2)
    assert waited >= 0.35, f"requeued after {waited:.2f} s, before the start deadline"
    await expect_cancel(slow, job_id, 1, "lease_lost", timeout=5)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["runner"], rec["attempt"], rec["lost_starts"]) == (
        "claimed",
        "spare",
        "2",
        "1",
    )
    slow_rec = runner_rec(rclient, keys, "slow")
    assert (slow_rec["state"], slow_rec["job"]) == ("idle", "")

    await slow.send("running", job=job_id, attempt=1)  # too late
    await expect_cancel(slow, job_id, 1, "lease_lost")
    assert job_rec(rclient, keys, job_id)["runner"] == "spare"
    # the start expiry did not use up max_attempts=1: the new attempt may run and finish
    await start_job(spare, job2)
    await spare.send("completed", job=job_id, attempt=2, exit_code=0, results=None)
    await expect_ack(spare, job_id, "completed")
    assert job_rec(rclient, keys, job_id)["status"] == "completed"


async def test_start_deadline_expiry_without_a_waiting_runner_puts_the_job_back_in_the_queue(
    launch, settings, rclient, keys
):
    pod = await launch(fast(settings, start_timeout=0.3))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys)
    await take_job(runner)
    await expect_cancel(runner, job_id, 1, "lease_lost", timeout=3)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["runner"], rec["attempt"]) == ("pending", "", "1")
    assert pending_ids(rclient, keys) == [job_id]
    await eventually(lambda: lease(rclient, keys, job_id) is None, what="lease entry dropped")


async def test_five_start_expiries_in_a_row_fail_the_job_not_started(
    launch, settings, rclient, keys
):
    pod = await launch(fast(settings, start_timeout=0.15))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys, max_attempts=3)
    for attempt in range(1, 6):
        job = await take_job(runner)
        assert (job["job"], job["attempt"]) == (job_id, attempt)
        await expect_cancel(runner, job_id, attempt, "lease_lost", timeout=3)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["error"], rec["attempt"]) == ("failed", "not started", "5")
    assert lease(rclient, keys, job_id) is None
    assert pending_ids(rclient, keys) == []
    await assert_usable(runner, rclient, keys)


async def test_running_resets_the_count_of_start_expiries(launch, settings, rclient, keys):
    # 0.5 s: the `running` of attempt 5 must arrive within the start timeout on a busy machine
    pod = await launch(fast(settings, start_timeout=0.5, lease_timeout=0.5))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys, max_attempts=2)
    for attempt in (1, 2, 3, 4):
        await take_job(runner)
        await expect_cancel(runner, job_id, attempt, "lease_lost", timeout=3)
    job = await take_job(runner)
    await start_job(runner, job)  # attempt 5 starts, then its lease expires (run 1 of 2)
    await expect_cancel(runner, job_id, 5, "lease_lost", timeout=3)
    job = await take_job(runner)  # attempt 6: one more start expiry must not fail the job
    assert job["attempt"] == 6
    await expect_cancel(runner, job_id, 6, "lease_lost", timeout=3)
    rec = job_rec(rclient, keys, job_id)
    assert rec["status"] == "pending"
    assert rec["lost_starts"] == "1"


async def test_lease_expiry_fails_the_job_when_no_attempts_remain(launch, settings, rclient, keys):
    pod = await launch(fast(settings, lease_timeout=0.4))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys, max_attempts=1)
    job = await take_job(runner)
    started = time.monotonic()  # before `running`, which starts the lease
    await start_job(runner, job)
    await expect_cancel(runner, job_id, 1, "lease_lost", timeout=5)
    assert time.monotonic() - started >= 0.35
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["error"]) == ("failed", "lease expired")
    assert lease(rclient, keys, job_id) is None
    assert runner_rec(rclient, keys, "r1")["job"] == ""
    await eventually(
        lambda: f"{job_id}:1" in queued_results(rclient, keys),
        what="failure queued for the result writers",
    )
    await runner.send("heartbeat", job=job_id, attempt=1)
    await expect_cancel(runner, job_id, 1, "lease_lost")
    await assert_usable(runner, rclient, keys)


async def test_lease_expiry_requeues_while_attempts_remain(launch, settings, rclient, keys):
    pod = await launch(fast(settings, lease_timeout=0.4))
    first = await connect(pod, "first", add_runner(settings, "first", [SPEC]))
    second = await connect(pod, "second", add_runner(settings, "second", [SPEC]))
    await ready_and_waiting(first, rclient, keys)
    job_id = submit(rclient, keys, max_attempts=2)
    job = await first.expect("job")
    await start_job(first, job)
    await second.send("ready", poll_timeout=10)
    job2 = await second.expect("job", timeout=3)
    assert (job2["job"], job2["attempt"]) == (job_id, 2)
    await expect_cancel(first, job_id, 1, "lease_lost", timeout=2)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["runner"], rec["attempt"], rec["runs"]) == (
        "claimed",
        "second",
        "2",
        "1",
    )
    # the second run's lease expires too: no attempts remain
    await start_job(second, job2)
    await expect_cancel(second, job_id, 2, "lease_lost", timeout=3)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["error"], rec["runs"]) == ("failed", "lease expired", "2")


async def test_heartbeats_keep_the_lease_alive(launch, settings, rclient, keys):
    # a 1 s lease and a heartbeat every 0.2 s: 0.8 s of slack for each round trip
    pod = await launch(fast(settings, lease_timeout=1.0))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    started = time.monotonic()
    while time.monotonic() - started < 2.2:  # more than two lease lengths
        await asyncio.sleep(0.2)
        await runner.send("heartbeat", job=job_id, attempt=1)
        await expect_ack(runner, job_id, "heartbeat")
    assert job_rec(rclient, keys, job_id)["status"] == "running"


async def test_lease_expires_for_a_disconnected_runner(launch, settings, rclient, keys):
    pod = await launch(fast(settings, lease_timeout=0.3))
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    await runner.close()
    await eventually(lambda: job_rec(rclient, keys, job_id)["status"] != "running", timeout=3)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["error"]) == ("failed", "lease expired")
    assert runner_rec(rclient, keys, "r1")["state"] == "offline"


async def test_job_timeout_plus_grace_cancels_the_job_with_reason_timeout(
    launch, settings, rclient, keys
):
    pod = await launch(fast(settings, timeout_grace=0.3, lease_timeout=30))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys, timeout=0.5)
    job = await take_job(runner)
    assert job["timeout"] == 0.5
    started = time.monotonic()  # before `running`: the deadline is at least 0.8 s after this
    await start_job(runner, job)
    await runner.silent(started + 0.75 - time.monotonic())  # not before timeout + grace
    await expect_cancel(runner, job_id, 1, "timeout", timeout=5)
    # the reaper's tick cancels it, long before the lease (30 s) would end the attempt
    assert time.monotonic() - started < 10
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["cancel_reason"]) == ("canceled", "timeout")
    assert lease(rclient, keys, job_id) is None
    assert runner_rec(rclient, keys, "r1")["job"] == ""
    await runner.send("canceled", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "canceled")
    assert job_rec(rclient, keys, job_id)["cancel_reason"] == "timeout"
    await assert_usable(runner, rclient, keys)


async def test_job_timeout_counts_from_running_not_from_claim(launch, settings, rclient, keys):
    pod = await launch(fast(settings, timeout_grace=0.1, start_timeout=5))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys, timeout=0.2)
    job = await take_job(runner)
    await runner.silent(0.5)  # claimed longer than timeout + grace: nothing happens
    assert job_rec(rclient, keys, job_id)["status"] == "claimed"
    await start_job(runner, job)
    await expect_cancel(runner, job_id, 1, "timeout", timeout=2)


async def test_ready_with_a_running_job_on_record_ends_that_attempt_at_once(
    pod, settings, rclient, keys
):
    """Rule 1: the runner restarted and lost the job; its `ready` fails it (max_attempts 1)."""
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys, max_attempts=1)
    job = await take_job(runner)
    await start_job(runner, job)
    await runner.close()
    await until_pod(rclient, keys, "r1", "")  # the pod has detached the closed connection
    again = await connect(pod, "r1", token)
    await assert_usable(again, rclient, keys)  # the failed job is not offered again
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["error"]) == ("failed", "lease expired")
    assert lease(rclient, keys, job_id) is None
    assert runner_rec(rclient, keys, "r1")["job"] != job_id


async def test_ready_with_a_running_job_on_record_requeues_it_when_attempts_remain(
    pod, settings, rclient, keys
):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys, max_attempts=2)
    job = await take_job(runner)
    await start_job(runner, job)
    await runner.close()
    await until_pod(rclient, keys, "r1", "")  # the pod has detached the closed connection
    again = await connect(pod, "r1", token)
    job2 = await take_job(again, timeout=1)
    assert (job2["job"], job2["attempt"]) == (job_id, 2)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["attempt"]) == ("claimed", "2")


async def test_ready_with_a_claimed_job_on_record_ends_that_attempt(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys, max_attempts=1)
    await take_job(runner)
    await runner.close()
    await until_pod(rclient, keys, "r1", "")  # the pod has detached the closed connection
    again = await connect(pod, "r1", token)
    job2 = await take_job(again, timeout=1)  # a start expiry does not use up an attempt
    assert (job2["job"], job2["attempt"]) == (job_id, 2)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["lost_starts"]) == ("claimed", "1")
    await again.send("running", job=job_id, attempt=1)
    await expect_cancel(again, job_id, 1, "lease_lost")


async def test_heartbeat_past_timeout_and_grace_is_answered_cancel_timeout(
    launch, settings, rclient, keys
):
    """Even before the reaper's tick notices (slow tick here), the heartbeat itself is told."""
    slow_tick = dataclasses.replace(settings, reconcile_interval=30, pod_ttl=90, timeout_grace=0.5)
    pod = await launch(slow_tick)
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys, timeout=1)
    job = await take_job(runner)
    await start_job(runner, job)
    await runner.send("heartbeat", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "heartbeat")  # within the limit: no false timeout
    await asyncio.sleep(1.6)  # the scenario: timeout + grace (1.5 s from `running`) passes
    await runner.send("heartbeat", job=job_id, attempt=1)
    await expect_cancel(runner, job_id, 1, "timeout")
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["cancel_reason"]) == ("canceled", "timeout")


async def test_websocket_pings_do_not_extend_the_lease(launch, settings, rclient, keys):
    pod = await launch(fast(settings, lease_timeout=0.3))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)

    async def ping_forever() -> None:
        while True:
            await (await runner.ws.ping())
            await asyncio.sleep(0.03)

    pinger = asyncio.create_task(ping_forever())
    try:
        await expect_cancel(runner, job_id, 1, "lease_lost", timeout=2)
    finally:
        pinger.cancel()
    assert job_rec(rclient, keys, job_id)["error"] == "lease expired"


async def test_lease_loss_reaches_a_reconnected_runner_before_it_reattaches(
    launch, settings, rclient, keys
):
    pod = await launch(fast(settings, lease_timeout=0.4))
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    await runner.close()
    again = await connect(pod, "r1", token)
    await expect_cancel(again, job_id, 1, "lease_lost", timeout=5)


async def test_heartbeats_without_running_do_not_count_as_a_start(launch, settings, rclient, keys):
    pod = await launch(fast(settings, start_timeout=0.3))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys)
    await take_job(runner)
    for _ in range(3):
        await runner.send("heartbeat", job=job_id, attempt=1)
        message = await runner.recv()
        if message["event"] == "cancel":
            break
        assert message == {"event": "ack", "job": job_id, "of": "heartbeat"}
        await asyncio.sleep(0.1)
    else:
        message = await runner.recv(2)
    assert message == {"event": "cancel", "job": job_id, "attempt": 1, "reason": "lease_lost"}
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["lost_starts"]) == ("pending", "1")
