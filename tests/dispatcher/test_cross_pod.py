"""Two pods on one Redis and one namespace: delivery, cancel, re-attach, supersede across pods."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from tests.dispatcher.support import (
    SPEC,
    cancel,
    complete,
    expect_ack,
    expect_cancel,
    job_rec,
    lease,
    ready_and_waiting,
    runner_rec,
    start_job,
    submit,
    take_job,
    until_pod,
)
from tests.podkit import add_runner, connect

# The doorbell is the fast path; the reconcile tick (which re-reads the inbox) is the fallback.
# Tests that time the fast path make the fallback 30 s, so a bound of a few seconds is both
# generous for a busy machine and proof that the doorbell, not the tick, did the work.
FAST_PATH_BOUND = 5.0


def slow_tick(settings):
    return dataclasses.replace(settings, reconcile_interval=30, pod_ttl=90)


async def test_job_submitted_while_the_runner_waits_on_pod_b_is_delivered_by_b(
    launch, settings, rclient, keys
):
    a, b = await launch(slow_tick(settings)), await launch(slow_tick(settings))
    near = await connect(a, "near", add_runner(settings, "near", ["other"]))
    far = await connect(b, "far", add_runner(settings, "far", [SPEC]))
    await ready_and_waiting(near, rclient, keys, poll_timeout=30, spec="other")
    await ready_and_waiting(far, rclient, keys, poll_timeout=30)
    assert runner_rec(rclient, keys, "far")["pod"] == b.id
    started = time.monotonic()
    job_id = submit(rclient, keys)
    job = await far.expect("job", timeout=FAST_PATH_BOUND + 1)
    assert job["job"] == job_id
    assert time.monotonic() - started < FAST_PATH_BOUND  # the doorbell, not the 30 s tick
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["runner"]) == ("claimed", "far")
    await near.silent(0.1)
    await start_job(far, job)
    await complete(far, job)
    assert job_rec(rclient, keys, job_id)["status"] == "completed"


async def test_longest_idle_runner_across_pods_gets_the_job(pods, settings, rclient, keys):
    a, b = pods
    first = await connect(a, "first", add_runner(settings, "first", [SPEC]))
    second = await connect(b, "second", add_runner(settings, "second", [SPEC]))
    await ready_and_waiting(second, rclient, keys)
    await ready_and_waiting(first, rclient, keys)
    job1 = submit(rclient, keys)
    got = await first.expect("job", timeout=5)  # registered (idle) first
    assert got["job"] == job1
    await complete(first, got)
    await ready_and_waiting(first, rclient, keys)
    job2 = submit(rclient, keys)  # `first` just worked: `second` has waited longer
    assert (await second.expect("job", timeout=5))["job"] == job2
    await first.silent(0.1)


async def test_producer_cancel_of_a_job_running_on_pod_a_is_pushed_by_a(
    launch, settings, rclient, keys
):
    a, _b = await launch(slow_tick(settings)), await launch(slow_tick(settings))
    runner = await connect(a, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    started = time.monotonic()
    assert cancel(rclient, keys, job_id) is True
    await expect_cancel(runner, job_id, 1, "canceled", timeout=FAST_PATH_BOUND + 1)
    assert time.monotonic() - started < FAST_PATH_BOUND  # the doorbell, not the 30 s tick
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["cancel_reason"]) == ("canceled", "canceled")
    assert lease(rclient, keys, job_id) is None
    assert runner_rec(rclient, keys, "r1")["job"] == ""
    await runner.send("canceled", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "canceled")
    assert job_rec(rclient, keys, job_id)["cancel_reason"] == "canceled"
    assert cancel(rclient, keys, job_id) is False  # already final


async def test_producer_cancel_of_a_claimed_job_is_pushed_by_the_runners_pod(
    pods, settings, rclient, keys
):
    _a, b = pods
    runner = await connect(b, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys)
    await take_job(runner)
    assert cancel(rclient, keys, job_id)
    await expect_cancel(runner, job_id, 1, "canceled", timeout=2)
    assert job_rec(rclient, keys, job_id)["status"] == "canceled"


async def test_runner_reattaches_on_pod_b_to_a_job_started_on_pod_a(pods, settings, rclient, keys):
    a, b = pods
    token = add_runner(settings, "r1", [SPEC])
    on_a = await connect(a, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(on_a)
    await start_job(on_a, job)
    await on_a.close()
    await until_pod(rclient, keys, "r1", "")  # pod a has detached the closed connection
    rec = runner_rec(rclient, keys, "r1")
    assert (rec["state"], rec["job"], rec["pod"]) == ("busy", job_id, "")

    on_b = await connect(b, "r1", token)
    await on_b.send("running", job=job_id, attempt=1)
    await expect_ack(on_b, job_id, "running")
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["attempt"], rec["runner"]) == ("running", "1", "r1")
    assert runner_rec(rclient, keys, "r1")["pod"] == b.id
    deadline = float(job_rec(rclient, keys, job_id)["lease_deadline"])
    await asyncio.sleep(0.05)
    await on_b.send("heartbeat", job=job_id, attempt=1)
    await expect_ack(on_b, job_id, "heartbeat")
    assert float(job_rec(rclient, keys, job_id)["lease_deadline"]) > deadline
    # the re-attached connection is the one a cancel is pushed to
    assert cancel(rclient, keys, job_id)
    await expect_cancel(on_b, job_id, 1, "canceled", timeout=2)


async def test_runner_reattached_on_pod_b_completes_its_job(pods, settings, rclient, keys):
    a, b = pods
    token = add_runner(settings, "r1", [SPEC])
    on_a = await connect(a, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(on_a)
    await start_job(on_a, job)
    on_b = await connect(b, "r1", token)  # reconnects before the old socket is gone
    code, reason = await on_a.closed(timeout=3)
    assert (code, bool(reason.strip())) == (4002, True)
    await start_job(on_b, job)
    await complete(on_b, job, exit_code=0, results={"pod": "b"})
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["results"]) == ("completed", '{"pod":"b"}')
    runner = runner_rec(rclient, keys, "r1")
    assert (runner["state"], runner["job"], runner["pod"]) == ("idle", "", b.id)


async def test_second_connection_on_another_pod_supersedes_the_first_with_4002(
    pods, settings, rclient, keys
):
    a, b = pods
    token = add_runner(settings, "r1", [SPEC])
    old = await connect(a, "r1", token)
    await ready_and_waiting(old, rclient, keys)
    new = await connect(b, "r1", token)
    code, reason = await old.closed(timeout=5)
    assert code == 4002
    assert reason.strip()
    # (no wait needed: the 4002 comes from b's attach, which moved the record; a's own detach of
    # the old connection is fenced by the connection number and changes nothing, whenever it runs)
    rec = runner_rec(rclient, keys, "r1")
    assert rec["pod"] == b.id
    assert rclient.sismember(keys.pod_runners(b.id), "r1")
    assert not rclient.sismember(keys.pod_runners(a.id), "r1")
    job_id = submit(rclient, keys)
    assert (await take_job(new))["job"] == job_id


async def test_pod_shutdown_then_reattach_on_the_other_pod(pods, settings, rclient, keys):
    a, b = pods
    token = add_runner(settings, "r1", [SPEC])
    on_a = await connect(a, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(on_a)
    await start_job(on_a, job)
    stopping = asyncio.create_task(a.stop())
    assert (await on_a.closed(timeout=5))[0] == 1001
    await stopping
    assert job_rec(rclient, keys, job_id)["status"] == "running"
    on_b = await connect(b, "r1", token)
    await start_job(on_b, job)
    await on_b.send("heartbeat", job=job_id, attempt=1)
    await expect_ack(on_b, job_id, "heartbeat")
    await complete(on_b, job)
    assert job_rec(rclient, keys, job_id)["status"] == "completed"


async def test_two_runners_racing_for_one_pending_job_exactly_one_gets_it(
    pods, settings, rclient, keys
):
    a, b = pods
    one = await connect(a, "one", add_runner(settings, "one", [SPEC]))
    two = await connect(b, "two", add_runner(settings, "two", [SPEC]))
    job_id = submit(rclient, keys)
    await asyncio.gather(one.send("ready", poll_timeout=1), two.send("ready", poll_timeout=1))
    answers = await asyncio.gather(one.recv(3), two.recv(3))
    events = sorted(message["event"] for message in answers)
    assert events == ["job", "no_job"], answers
    winner = "one" if answers[0]["event"] == "job" else "two"
    assert job_rec(rclient, keys, job_id)["runner"] == winner


async def test_simultaneous_connections_on_two_pods_leave_exactly_one_open(
    pods, settings, rclient, keys
):
    a, b = pods
    token = add_runner(settings, "r1", [SPEC])
    on_a, on_b = await asyncio.gather(connect(a, "r1", token), connect(b, "r1", token))

    # The loser is closed through its pod's inbox and doorbell (at worst the 0.2 s tick): wait for
    # the first close as long as a busy machine needs, then give the other one more second to be
    # closed too (it must not be); the job at the end proves the survivor works.
    closing = [asyncio.create_task(runner.closed(timeout=10)) for runner in (on_a, on_b)]
    await asyncio.wait(closing, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.wait(closing, timeout=1)
    results = [task.result() if task.done() else "open" for task in closing]
    for task in closing:
        task.cancel()  # the survivor's pending recv (cancelling it loses no frame)
    await asyncio.gather(*closing, return_exceptions=True)
    assert sorted(map(str, results)).count("open") == 1, results
    closed = next(r for r in results if r != "open")
    assert closed[0] == 4002
    survivor, pod = (on_a, a) if results[0] == "open" else (on_b, b)
    assert runner_rec(rclient, keys, "r1")["pod"] == pod.id
    job_id = submit(rclient, keys)
    assert (await take_job(survivor))["job"] == job_id


async def test_producer_cancel_reaches_a_reconnected_runner_before_it_reattaches(
    pods, settings, rclient, keys
):
    a, b = pods
    token = add_runner(settings, "r1", [SPEC])
    on_a = await connect(a, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(on_a)
    await start_job(on_a, job)
    await on_a.close()
    on_b = await connect(b, "r1", token)
    await until_pod(rclient, keys, "r1", b.id)
    assert cancel(rclient, keys, job_id)
    await expect_cancel(on_b, job_id, 1, "canceled", timeout=5)
