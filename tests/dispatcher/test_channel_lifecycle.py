"""The runner channel's normal life (PROTOCOL.md rules 1, 2 and 4), against a real pod and Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from datetime import UTC, datetime

import pytest

from tests.dispatcher.support import (
    SPEC,
    assert_usable,
    cancel,
    complete,
    expect_ack,
    idle_runners,
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
    until_waiting,
)
from tests.podkit import add_runner, connect


async def test_full_lifecycle_is_acknowledged_step_by_step_and_recorded(
    pod, settings, rclient, keys
):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    info = {"version": "1.2.3", "os": "linux", "arch": "x86_64", "hostname": "box1"}
    await runner.send("ready", poll_timeout=5, runner=info)
    await until_waiting(rclient, keys, "r1")
    payload = {"command": ["make", "test"], "env": {"A": "1"}, "n": [1, 2.5, None]}
    before = time.time()
    job_id = submit(rclient, keys, payload=payload, timeout=120)

    job = await runner.expect("job")
    assert job["job"] == job_id
    assert job["attempt"] == 1
    assert job["spec"] == SPEC
    assert job["payload"] == payload
    assert job["timeout"] == 120
    assert job["heartbeat_interval"] == settings.heartbeat_interval
    created = datetime.fromisoformat(job["created"].replace("Z", "+00:00"))
    assert created.tzinfo is not None
    assert abs(created.astimezone(UTC).timestamp() - before) < 5
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["runner"], rec["attempt"]) == ("claimed", "r1", "1")
    runner_record = runner_rec(rclient, keys, "r1")
    assert (runner_record["state"], runner_record["job"], runner_record["attempt"]) == (
        "busy",
        job_id,
        "1",
    )
    assert json.loads(runner_record["info"]) == info

    await runner.send("running", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "running")
    rec = job_rec(rclient, keys, job_id)
    assert rec["status"] == "running"
    assert rec["started"]
    first_deadline = float(rec["lease_deadline"])

    await asyncio.sleep(0.05)  # the scenario: time passes, so the new deadline (ms) is later
    await runner.send("heartbeat", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "heartbeat")
    rec = job_rec(rclient, keys, job_id)
    assert rec["status"] == "running"
    assert float(rec["lease_deadline"]) > first_deadline  # the heartbeat extended the lease

    await runner.send(
        "completed",
        job=job_id,
        attempt=1,
        exit_code=0,
        results={"score": 1.5, "ok": True},
        stdout="all good\n",
        stderr="",
    )
    await expect_ack(runner, job_id, "completed")
    rec = job_rec(rclient, keys, job_id)
    assert rec["status"] == "completed"
    assert rec["exit_code"] == "0"
    assert json.loads(rec["results"]) == {"score": 1.5, "ok": True}
    assert rec["stdout"] == "all good\n"
    assert rec["stderr"] == ""
    assert rec["finished"]
    assert rec["attempt"] == "1"
    assert lease(rclient, keys, job_id) is None
    assert f"{job_id}:1" in queued_results(rclient, keys)
    runner_record = runner_rec(rclient, keys, "r1")
    assert (runner_record["state"], runner_record["job"]) == ("idle", "")

    await runner.silent(0.2)  # the server keeps the connection open and says nothing more
    await assert_usable(runner, rclient, keys)


async def test_failed_is_acknowledged_and_recorded(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    await runner.send(
        "failed",
        job=job_id,
        attempt=1,
        error="segfault",
        exit_code=139,
        results=None,
        stdout="out",
        stderr="core dumped",
    )
    await expect_ack(runner, job_id, "failed")
    rec = job_rec(rclient, keys, job_id)
    assert rec["status"] == "failed"
    assert rec["error"] == "segfault"
    assert rec["exit_code"] == "139"
    assert (rec["stdout"], rec["stderr"]) == ("out", "core dumped")
    assert lease(rclient, keys, job_id) is None
    assert f"{job_id}:1" in queued_results(rclient, keys)
    assert runner_rec(rclient, keys, "r1")["job"] == ""
    await assert_usable(runner, rclient, keys)


async def test_runner_initiated_canceled_is_acknowledged_and_recorded(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    await runner.send("canceled", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "canceled")
    rec = job_rec(rclient, keys, job_id)
    assert rec["status"] == "canceled"
    assert lease(rclient, keys, job_id) is None
    assert runner_rec(rclient, keys, "r1")["job"] == ""
    await assert_usable(runner, rclient, keys)


async def test_completed_straight_from_claimed_is_accepted(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    await take_job(runner)
    assert job_rec(rclient, keys, job_id)["status"] == "claimed"
    await runner.send("completed", job=job_id, attempt=1, exit_code=0, results=[1, 2])
    await expect_ack(runner, job_id, "completed")
    rec = job_rec(rclient, keys, job_id)
    assert rec["status"] == "completed"
    assert json.loads(rec["results"]) == [1, 2]
    assert lease(rclient, keys, job_id) is None
    assert runner_rec(rclient, keys, "r1")["job"] == ""


async def test_failed_straight_from_claimed_is_accepted(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    await take_job(runner)
    await runner.send("failed", job=job_id, attempt=1, error="cannot pull image")
    await expect_ack(runner, job_id, "failed")
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["error"]) == ("failed", "cannot pull image")
    assert lease(rclient, keys, job_id) is None


async def test_multi_job_cycle_on_one_connection(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    first = submit(rclient, keys)
    second = submit(rclient, keys)
    runner = await connect(pod, "r1", token)
    seen = []
    for _ in range(2):
        job = await take_job(runner)
        seen.append(job["job"])
        await start_job(runner, job)
        await runner.send("heartbeat", job=job["job"], attempt=1)
        await expect_ack(runner, job["job"], "heartbeat")
        await complete(runner, job)
        assert job_rec(rclient, keys, job["job"])["status"] == "completed"
    assert seen == [first, second]
    await assert_usable(runner, rclient, keys)


async def test_ready_without_poll_timeout_gets_a_waiting_job_at_once(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    job_id = submit(rclient, keys)
    runner = await connect(pod, "r1", token)
    started = time.monotonic()
    await runner.send("ready")
    job = await runner.expect("job", timeout=10)
    assert job["job"] == job_id
    assert time.monotonic() - started < 5  # at once, not after the default 30 s poll


async def test_ready_without_poll_timeout_holds_the_poll_open(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    await runner.send("ready")  # default 30 s: no answer now, the poll stays open
    await runner.silent(1.2)
    await until_waiting(rclient, keys, "r1")  # accepted, not only not answered yet
    assert idle_runners(rclient, keys) == ["r1"]
    job_id = submit(rclient, keys)
    assert (await runner.expect("job", timeout=5))["job"] == job_id


async def test_no_job_comes_when_the_poll_timeout_expires_and_not_before(
    launch, settings, rclient, keys
):
    pod = await launch(dataclasses.replace(settings, linger=0))  # DESIGN step 4 to the letter
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    started = time.monotonic()
    await runner.send("ready", poll_timeout=1)
    await runner.silent(0.85)
    await runner.expect("no_job", timeout=5)
    assert 0.95 <= time.monotonic() - started < 5  # the 1 s poll timeout, not the default 30 s
    # the runner left the idle sets: a job submitted now waits for the next `ready`
    assert idle_runners(rclient, keys) == []
    job_id = submit(rclient, keys)
    await runner.silent(0.3)
    assert job_rec(rclient, keys, job_id)["status"] == "pending"
    assert pending_ids(rclient, keys) == [job_id]
    assert (await take_job(runner))["job"] == job_id


async def test_job_submitted_while_the_poll_is_open_arrives_at_once(
    launch, settings, rclient, keys
):
    # the fallback (the tick re-reading the pod's inbox) every 30 s: a delivery within a few
    # seconds, generous for a busy machine, can only be the doorbell's
    pod = await launch(dataclasses.replace(settings, reconcile_interval=30, pod_ttl=90))
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    await ready_and_waiting(runner, rclient, keys, poll_timeout=60)
    started = time.monotonic()
    job_id = submit(rclient, keys)
    job = await runner.expect("job", timeout=10)
    latency = time.monotonic() - started
    assert job["job"] == job_id
    assert latency < 5, f"delivery took {latency:.3f} s"
    assert job_rec(rclient, keys, job_id)["runner"] == "r1"


async def test_priority_order_larger_first_then_older_first(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    low = submit(rclient, keys, priority=0)
    high_old = submit(rclient, keys, priority=5)
    negative = submit(rclient, keys, priority=-3)
    high_new = submit(rclient, keys, priority=5)
    mid = submit(rclient, keys, priority=1)
    runner = await connect(pod, "r1", token)
    order = []
    for _ in range(5):
        job = await take_job(runner)
        order.append(job["job"])
        await complete(runner, job)
    assert order == [high_old, high_new, mid, low, negative]


async def test_runner_with_two_specs_gets_jobs_of_both_and_no_other(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", ["linux", "macos"])
    mac = submit(rclient, keys, spec="macos")
    win = submit(rclient, keys, spec="windows")
    lin = submit(rclient, keys, spec="linux")
    runner = await connect(pod, "r1", token)
    got = []
    for _ in range(2):
        job = await take_job(runner)
        got.append((job["job"], job["spec"]))
        await complete(runner, job)
    assert got == [(mac, "macos"), (lin, "linux")]
    await assert_usable(runner, rclient, keys)
    assert job_rec(rclient, keys, win)["status"] == "pending"


async def test_job_of_the_second_spec_submitted_during_a_poll_is_delivered(
    pod, settings, rclient, keys
):
    token = add_runner(settings, "r1", ["linux", "macos"])
    runner = await connect(pod, "r1", token)
    await ready_and_waiting(runner, rclient, keys, poll_timeout=10, spec="macos")
    job_id = submit(rclient, keys, spec="macos")
    job = await runner.expect("job", timeout=5)
    assert (job["job"], job["spec"]) == (job_id, "macos")
    assert idle_runners(rclient, keys, "linux") == []  # it left every idle set


async def test_unknown_fields_are_ignored(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    await runner.send("ready", poll_timeout=2, future_field={"x": 1})
    job = await runner.expect("job")
    await runner.send("running", job=job_id, attempt=job["attempt"], extra="ignored")
    await expect_ack(runner, job_id, "running")
    await runner.send("completed", job=job_id, attempt=1, exit_code=0, results=None, more=[1])
    await expect_ack(runner, job_id, "completed")
    assert job_rec(rclient, keys, job_id)["status"] == "completed"


async def test_running_twice_is_acknowledged_twice(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    started = job_rec(rclient, keys, job_id)["started"]
    await start_job(runner, job)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["started"], rec["attempt"], rec["runs"]) == (
        "running",
        started,
        "1",
        "1",
    )


async def test_heartbeat_before_running_is_acknowledged_and_the_job_stays_claimed(
    pod, settings, rclient, keys
):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    await take_job(runner)
    await runner.send("heartbeat", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "heartbeat")
    rec = job_rec(rclient, keys, job_id)
    assert rec["status"] == "claimed"
    assert not rec.get("started")


@pytest.mark.parametrize(
    ("event", "fields", "status"),
    [
        ("completed", {"exit_code": 3, "results": {"n": 1}}, "completed"),
        ("failed", {"error": "disk full", "exit_code": 3}, "failed"),
    ],
)
async def test_terminal_sent_first_after_reconnect_is_recorded(
    pod, settings, rclient, keys, event, fields, status
):
    """Rule 1: a runner holding an unacknowledged result sends it first on the new connection."""
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    await runner.close()
    await until_pod(rclient, keys, "r1", "")  # the pod detached the closed connection
    assert runner_rec(rclient, keys, "r1")["state"] == "busy"  # the job keeps its runner
    again = await connect(pod, "r1", token)
    await again.send(event, job=job_id, attempt=1, **fields)
    await expect_ack(again, job_id, event)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["exit_code"]) == (status, "3")
    assert runner_rec(rclient, keys, "r1")["job"] == ""
    await assert_usable(again, rclient, keys)


async def test_pending_job_canceled_before_any_ready_is_never_delivered(
    pod, settings, rclient, keys
):
    token = add_runner(settings, "r1", [SPEC])
    job_id = submit(rclient, keys)
    assert cancel(rclient, keys, job_id) is True
    assert job_rec(rclient, keys, job_id)["status"] == "canceled"
    assert pending_ids(rclient, keys) == []
    runner = await connect(pod, "r1", token)
    await assert_usable(runner, rclient, keys)


async def test_poll_timeout_bounds_1_and_900_are_accepted(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    await runner.send("ready", poll_timeout=900)
    await runner.silent(0.2)  # no answer (and no close) to a 900 s poll
    await until_waiting(rclient, keys, "r1")  # the poll was accepted
    job_id = submit(rclient, keys)
    job = await runner.expect("job")
    assert job["job"] == job_id
    await complete(runner, job)
    await assert_usable(runner, rclient, keys)


async def test_after_no_job_a_lingering_runner_gets_a_job_submitted_before_its_next_ready(
    pod, settings, rclient, keys
):
    """With the default linger, the runner stays in the idle sets between `no_job` and its next
    `ready`: that `ready` costs no Redis call, and a job submitted meanwhile is its answer."""
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    await runner.send("ready", poll_timeout=1)
    await runner.expect("no_job", timeout=2)
    assert idle_runners(rclient, keys) == ["r1"]
    job_id = submit(rclient, keys)
    await runner.silent(0.3)  # a job is only ever sent in answer to `ready`
    assert (job_rec(rclient, keys, job_id)["status"], job_rec(rclient, keys, job_id)["runner"]) == (
        "claimed",
        "r1",
    )
    assert (await take_job(runner))["job"] == job_id


async def test_a_runner_that_does_not_ask_again_hands_back_the_job_held_for_it(
    launch, settings, rclient, keys
):
    pod = await launch(dataclasses.replace(settings, linger=0.5))
    quiet = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    await quiet.send("ready", poll_timeout=1)
    await quiet.expect("no_job", timeout=2)
    job_id = submit(rclient, keys)  # held for r1, which never sends `ready` again
    other = await connect(pod, "r2", add_runner(settings, "r2", [SPEC]))
    job = await take_job(other, poll_timeout=5)
    assert (job["job"], job["attempt"]) == (job_id, 2)
    assert runner_rec(rclient, keys, "r1")["job"] == ""
    assert idle_runners(rclient, keys) == []
    assert job_rec(rclient, keys, job_id)["lost_starts"] == "0"  # not a lost start
    await quiet.silent(0.2)
