"""Faults: a lost PUBLISH, a dropped pub/sub connection, dropped Redis connections, dead peers.

Pub/sub is only the fast path; the per-pod inbox re-read on every (re)subscribe and on the
reconcile tick (0.2 s in these tests) bounds the delay of a lost doorbell.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import httpx
import websockets

from dispatcher.pod.pod import REDIS_POOL_SIZE
from tests.dispatcher.support import (
    SPEC,
    cancel,
    complete,
    eventually,
    expect_ack,
    expect_cancel,
    job_rec,
    kill_own_clients,
    ready_and_waiting,
    runner_rec,
    start_job,
    submit,
    take_job,
)
from tests.podkit import add_runner, connect

# A lost doorbell costs at most a reconcile tick (0.2 s here); without the tick the runners here
# would only get their job when their 10 s poll ends. 5 s is generous for a busy machine and
# still proves the tick did it.
MARGIN = 5.0


async def test_healthz_and_readyz_answer_200(pod):
    # the pod counts as ready once its doorbell subscription is confirmed, which on a busy
    # machine can come a moment after uvicorn has started
    await eventually(lambda: pod.server.pod.doorbell.live, what="doorbell live")
    async with httpx.AsyncClient(base_url=pod.url) as http:
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
    assert health.status_code == 200
    assert ready.status_code == 200


async def test_job_submitted_right_after_the_pubsub_connection_is_killed_is_delivered(
    pods, settings, rclient, keys
):
    a, b = pods
    on_a = await connect(a, "ra", add_runner(settings, "ra", [SPEC]))
    on_b = await connect(b, "rb", add_runner(settings, "rb", [SPEC]))
    await ready_and_waiting(on_a, rclient, keys)
    await ready_and_waiting(on_b, rclient, keys)
    # both doorbells are subscribed (so there is a subscription to kill on each pod)
    await eventually(
        lambda: a.server.pod.doorbell.live and b.server.pod.doorbell.live, what="doorbells live"
    )
    assert kill_own_clients(rclient, "pubsub") >= 2
    started = time.monotonic()
    first = submit(rclient, keys)
    second = submit(rclient, keys)
    got = await asyncio.gather(on_a.expect("job", MARGIN), on_b.expect("job", MARGIN))
    assert time.monotonic() - started < MARGIN
    assert {job["job"] for job in got} == {first, second}
    for runner, job in zip((on_a, on_b), got, strict=True):
        await start_job(runner, job)
        await complete(runner, job)
    assert {job_rec(rclient, keys, j)["status"] for j in (first, second)} == {"completed"}


async def test_job_submitted_while_the_pubsub_connection_stays_down_is_delivered(
    pod, settings, rclient, keys
):
    """Keep killing the doorbell's connection: the reconcile tick alone must deliver."""
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    await ready_and_waiting(runner, rclient, keys)
    stop = asyncio.Event()

    async def keep_killing() -> None:
        while not stop.is_set():
            kill_own_clients(rclient, "pubsub")
            await asyncio.sleep(0.005)

    killer = asyncio.create_task(keep_killing())
    try:
        async with httpx.AsyncClient(base_url=pod.url) as http:
            statuses = set()
            deadline = time.monotonic() + MARGIN
            while 503 not in statuses and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                statuses.add((await http.get("/readyz")).status_code)
        assert 503 in statuses, "readyz must not answer 200 while the doorbell is down"
        started = time.monotonic()
        job_id = submit(rclient, keys)
        job = await runner.expect("job", MARGIN)
        took = time.monotonic() - started
    finally:
        stop.set()
        await killer
    assert job["job"] == job_id
    assert took < MARGIN, f"delivered after {took:.2f} s"
    await start_job(runner, job)
    await complete(runner, job)
    # the doorbell comes back by itself
    async with httpx.AsyncClient(base_url=pod.url) as http:

        async def ready() -> bool:
            return (await http.get("/readyz")).status_code == 200

        # (its back-off grew while it was being killed: up to a few seconds)
        deadline = time.monotonic() + 30
        while not await ready() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await ready()


async def test_cancel_is_pushed_after_the_pubsub_connection_is_killed(pod, settings, rclient, keys):
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    kill_own_clients(rclient, "pubsub")
    assert cancel(rclient, keys, job_id)
    await expect_cancel(runner, job_id, 1, "canceled", timeout=MARGIN)


async def reconnect_through_503(pod, name, token):
    """Connect as a runner agent does: a handshake refused 503 ("storage unavailable") is tried
    again. Every pooled connection of the pod was killed, and each one costs one failed command
    (how many the pool held depends on timing), so the first handshakes may meet a dead one."""
    for _ in range(REDIS_POOL_SIZE + 1):
        try:
            return await connect(pod, name, token)
        except websockets.exceptions.InvalidStatus as exc:
            assert exc.response.status_code == 503, exc.response
            await asyncio.sleep(0.05)
    raise AssertionError("the pod never recovered its Redis connections")


async def test_dropped_redis_connections_of_the_pod_lose_no_job(pod, settings, rclient, keys):
    """A Redis connection error closes the socket with 1011 or is retried; nothing is half-done."""
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    kill_own_clients(rclient, "normal")
    await runner.send("heartbeat", job=job_id, attempt=1)
    reply: dict[str, object] | None = None
    closed: tuple[int | None, str] | None = None
    try:
        reply = await runner.recv(3)
    except Exception:
        closed = await runner.closed(1)
    if reply is not None:
        assert reply == {"event": "ack", "job": job_id, "of": "heartbeat"}
    else:
        assert closed is not None and closed[0] == 1011, closed
        runner = await reconnect_through_503(pod, "r1", token)
        await start_job(runner, job)
    await runner.send("completed", job=job_id, attempt=1, exit_code=0, results=None)
    await expect_ack(runner, job_id, "completed")
    assert job_rec(rclient, keys, job_id)["status"] == "completed"


async def test_unresponsive_runner_is_dropped_after_the_ping_timeout(
    launch, settings, rclient, keys
):
    pod = await launch(dataclasses.replace(settings, ping_interval=0.2, ping_timeout=0.3))
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token, ping_interval=None)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    transport = runner.ws.transport
    transport.pause_reading()  # pings stay unanswered
    try:
        await eventually(
            lambda: runner_rec(rclient, keys, "r1")["pod"] == "",
            timeout=3,
            what="the pod dropped the silent connection",
        )
    finally:
        with contextlib.suppress(Exception):
            transport.resume_reading()
    rec = job_rec(rclient, keys, job_id)
    assert rec["status"] == "running"  # the job keeps its lease
    again = await connect(pod, "r1", token)
    await start_job(again, job)


async def test_server_answers_a_runners_ping(pod, settings):
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    latency = await asyncio.wait_for(await runner.ws.ping(b"hello"), 2)
    assert latency >= 0


async def test_no_job_is_assigned_to_a_runner_whose_pod_stopped_renewing_its_presence(
    launch, settings, rclient, keys
):
    """A pod that hangs or dies: its idle runners are skipped once its presence expires."""
    frozen = await launch(dataclasses.replace(settings, pod_ttl=0.7))
    runner = await connect(frozen, "r1", add_runner(settings, "r1", [SPEC]))
    await ready_and_waiting(runner, rclient, keys)
    pod = frozen.server.pod
    # no more ticks, no doorbell: the pod looks dead to Redis (cancel until it sticks: see
    # conftest.stop_pod about cancellations lost inside redis-py on Python 3.11)
    for _ in range(50):
        running = [task for task in pod._tasks if not task.done()]
        if not running:
            break
        for task in running:
            task.cancel()
        await asyncio.wait(running, timeout=0.1)
    assert all(task.done() for task in pod._tasks)
    await asyncio.sleep(0.9)  # the scenario: its presence (0.7 s from the last tick) lapses
    job_id = submit(rclient, keys)
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["runner"]) == ("pending", "")
    assert runner_rec(rclient, keys, "r1")["job"] == ""
    # a runner on a live pod gets it
    alive = await launch(settings)
    other = await connect(alive, "r2", add_runner(settings, "r2", [SPEC]))
    assert (await take_job(other))["job"] == job_id
