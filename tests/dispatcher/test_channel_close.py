"""Closes the server starts: revoke (4001), supersede (4002), pod shutdown (1001).

Closing a connection never loses a job: a job in flight keeps its runner and its lease.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import websockets

from tests.dispatcher.support import (
    SPEC,
    eventually,
    expect_ack,
    idle_runners,
    job_rec,
    lease,
    pending_ids,
    ready_and_waiting,
    revoke,
    runner_rec,
    start_job,
    submit,
    take_job,
    until_pod,
)
from tests.podkit import add_runner, connect


async def test_revoke_while_polling_closes_4001_and_the_token_stops_working(
    pod, settings, rclient, keys
):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    await ready_and_waiting(runner, rclient, keys)
    revoke(rclient, keys, "r1")
    code, reason = await runner.closed(timeout=3)
    assert code == 4001
    assert reason.strip()
    assert rclient.exists(keys.runner("r1")) == 0
    assert idle_runners(rclient, keys) == []
    job_id = submit(rclient, keys)
    assert job_rec(rclient, keys, job_id)["status"] == "pending"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await connect(pod, "r1", token)
    assert refused.value.response.status_code == 401


async def test_revoke_of_an_idle_connection_closes_4001(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    await until_pod(rclient, keys, "r1", pod.id)  # attached (the upgrade comes before that)
    revoke(rclient, keys, "r1")
    code, reason = await runner.closed(timeout=3)
    assert (code, bool(reason.strip())) == (4001, True)


async def test_revoke_with_a_job_in_flight_closes_4001_and_the_job_keeps_its_lease(
    launch, settings, rclient, keys
):
    pod = await launch(dataclasses.replace(settings, lease_timeout=0.6))
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    before = job_rec(rclient, keys, job_id)
    revoke(rclient, keys, "r1")
    code, reason = await runner.closed(timeout=3)
    assert (code, bool(reason.strip())) == (4001, True)
    assert job_rec(rclient, keys, job_id) == before
    assert lease(rclient, keys, job_id) is not None
    # the lease then expires like that of any vanished runner; the record stays deleted
    await eventually(lambda: job_rec(rclient, keys, job_id)["status"] == "failed", timeout=3)
    assert job_rec(rclient, keys, job_id)["error"] == "lease expired"
    assert rclient.exists(keys.runner("r1")) == 0


async def test_second_connection_supersedes_the_first_with_4002(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    first = await connect(pod, "r1", token)
    await ready_and_waiting(first, rclient, keys)
    conn_before = int(runner_rec(rclient, keys, "r1")["conn"])
    second = await connect(pod, "r1", token)
    code, reason = await first.closed(timeout=3)
    assert code == 4002
    assert reason.strip()
    rec = runner_rec(rclient, keys, "r1")
    assert int(rec["conn"]) == conn_before + 1
    assert rec["pod"] == pod.id
    # the old poll is gone: a job goes to the new connection once it asks
    assert idle_runners(rclient, keys) == []
    job_id = submit(rclient, keys)
    assert pending_ids(rclient, keys) == [job_id]
    assert (await take_job(second))["job"] == job_id


async def test_superseding_connection_reattaches_to_the_job_in_flight(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    first = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(first)
    await start_job(first, job)
    second = await connect(pod, "r1", token)
    assert (await first.closed(timeout=3))[0] == 4002
    assert job_rec(rclient, keys, job_id)["status"] == "running"
    await start_job(second, job)  # re-attach
    await second.send("heartbeat", job=job_id, attempt=1)
    await expect_ack(second, job_id, "heartbeat")
    await second.send("completed", job=job_id, attempt=1, exit_code=0, results=None)
    await expect_ack(second, job_id, "completed")
    assert job_rec(rclient, keys, job_id)["status"] == "completed"


async def test_pod_shutdown_closes_an_idle_channel_with_1001(launch, settings, rclient, keys):
    pod = await launch(settings)
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    await until_pod(rclient, keys, "r1", pod.id)  # attached (the upgrade comes before that)
    stopping = asyncio.create_task(pod.stop())
    code, reason = await runner.closed(timeout=5)
    await stopping
    assert code == 1001
    assert reason.strip()
    rec = runner_rec(rclient, keys, "r1")
    assert (rec["state"], rec["pod"], rec["job"]) == ("offline", "", "")
    assert pod.id not in rclient.zrange(keys.pods, 0, -1)


async def test_pod_shutdown_ends_an_open_poll_and_no_job_is_assigned_to_it(
    launch, settings, rclient, keys
):
    pod = await launch(settings)
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    await ready_and_waiting(runner, rclient, keys)
    stopping = asyncio.create_task(pod.stop())
    code, _ = await runner.closed(timeout=5)
    await stopping
    assert code == 1001
    assert idle_runners(rclient, keys) == []
    job_id = submit(rclient, keys)
    assert job_rec(rclient, keys, job_id)["status"] == "pending"


async def test_pod_shutdown_mid_job_closes_1001_and_the_job_stays_running(
    launch, settings, rclient, keys
):
    pod = await launch(settings)
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    before = job_rec(rclient, keys, job_id)
    deadline = lease(rclient, keys, job_id)
    stopping = asyncio.create_task(pod.stop())
    code, reason = await runner.closed(timeout=5)
    await stopping
    assert code == 1001
    assert reason.strip()
    assert job_rec(rclient, keys, job_id) == before
    assert before["status"] == "running"
    assert lease(rclient, keys, job_id) == deadline
    rec = runner_rec(rclient, keys, "r1")
    assert (rec["state"], rec["job"], rec["attempt"], rec["pod"]) == ("busy", job_id, "1", "")
    # the runner reconnects to any pod and re-attaches
    other = await launch(settings)
    again = await connect(other, "r1", token)
    await start_job(again, job)
    assert job_rec(rclient, keys, job_id)["status"] == "running"
    assert runner_rec(rclient, keys, "r1")["pod"] == other.id
