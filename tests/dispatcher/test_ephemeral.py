"""Ephemeral runners (issue 12): the registration ends with the runner's first attempt.

Real pods, runners speaking the protocol frame by frame. The call that ends the attempt removes
the runner record; the pod acknowledges the result, then closes with 4001; a reconnect with the
same token gets 401.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from dispatch_protocol import closecodes
from dispatcher import admin, functions
from dispatcher.client import AsyncClient, Client
from dispatcher.errors import InvalidInput
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.dispatcher import groupkit
from tests.dispatcher.support import (
    SPEC,
    eventually,
    expect_ack,
    expect_cancel,
    job_events,
    queued_results,
    start_job,
    take_job,
)
from tests.podkit import RunningPod, add_runner, connect

CMD = {"command": ["true"]}


def fast(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, reconcile_interval=0.05, **changes)


def registered(rclient: Any, keys: Keys, name: str) -> bool:
    return bool(rclient.exists(keys.runner(name))) or rclient.sismember(keys.runners, name)


async def refused_with(pod: RunningPod, name: str, token: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(
            pod.ws_url(name), additional_headers={"Authorization": f"Bearer {token}"}
        )
    return refused.value.response.status_code


async def test_the_token_stops_working_once_the_first_job_is_final(launch, settings, rclient, keys):
    pod = await launch(settings)
    with Client(settings) as client:
        token = client.add_runner("vm-1", [SPEC], ephemeral=True)
        assert [r["ephemeral"] for r in client.runners()] == [True]
        runner = await connect(pod, "vm-1", token)
        job_id = client.submit(SPEC, CMD)
        job = await take_job(runner)
        await start_job(runner, job)
        await runner.send("completed", job=job_id, attempt=1, exit_code=0)
        await expect_ack(runner, job_id, "completed")  # the ack comes first, then the close
        code, _reason = await runner.closed()
        assert code == closecodes.REVOKED
        assert client.get(job_id)["status"] == "completed"
        assert client.runners() == []
    assert not registered(rclient, keys, "vm-1")
    assert queued_results(rclient, keys) == [f"{job_id}:1"]
    assert await refused_with(pod, "vm-1", token) == 401
    retired = [e for _id, e in rclient.xrange(keys.events) if e["event"] == "runner_retired"]
    assert [e["runner"] for e in retired] == ["vm-1"]


async def test_a_retried_failure_ends_the_ephemeral_runner_too(launch, settings, rclient, keys):
    """Its attempt is over even though the job is not final: the retry goes to another runner."""
    pod = await launch(settings)
    with Client(settings) as client:
        token = client.add_runner("vm-1", [SPEC], ephemeral=True)
        spare = await connect(pod, "spare", add_runner(settings, "spare", [SPEC]))
        runner = await connect(pod, "vm-1", token)
        job_id = client.submit(SPEC, CMD, retries=1)
        job = await take_job(runner)
        await start_job(runner, job)
        await runner.send("failed", job=job_id, attempt=1, exit_code=1, error="exit code 1")
        await expect_ack(runner, job_id, "failed")
        assert (await runner.closed())[0] == closecodes.REVOKED
        again = await take_job(spare)
        assert (again["job"], again["attempt"]) == (job_id, 2)
    assert not registered(rclient, keys, "vm-1")


async def test_a_job_canceled_by_the_producer_ends_the_ephemeral_runner(
    launch, settings, rclient, keys
):
    pod = await launch(settings)
    async with AsyncClient(settings) as client:
        token = await client.add_runner("vm-1", [SPEC], ephemeral=True)
        runner = await connect(pod, "vm-1", token)
        job_id = await client.submit(SPEC, CMD)
        job = await take_job(runner)
        await start_job(runner, job)
        assert await client.cancel(job_id) is True
        await expect_cancel(runner, job_id, 1, "canceled")
        assert (await runner.closed())[0] == closecodes.REVOKED
    assert not registered(rclient, keys, "vm-1")
    assert await refused_with(pod, "vm-1", token) == 401


async def test_a_lost_lease_ends_the_ephemeral_runner(launch, settings, rclient, keys):
    pod = await launch(fast(settings, lease_timeout=0.5))
    with Client(settings) as client:
        token = client.add_runner("vm-1", [SPEC], ephemeral=True)
        runner = await connect(pod, "vm-1", token)
        job_id = client.submit(SPEC, CMD, max_attempts=2)
        job = await take_job(runner)
        await start_job(runner, job)
        await runner.close()
        await eventually(lambda: client.get(job_id)["status"] == "pending", timeout=10)
    assert not registered(rclient, keys, "vm-1")
    assert await refused_with(pod, "vm-1", token) == 401


async def test_an_ordinary_runner_stays_registered(launch, settings, rclient, keys):
    pod = await launch(settings)
    with Client(settings) as client:
        token = client.add_runner("r1", [SPEC])
        runner = await connect(pod, "r1", token)
        job_id = client.submit(SPEC, CMD)
        job = await take_job(runner)
        await start_job(runner, job)
        await runner.send("completed", job=job_id, attempt=1, exit_code=0)
        await expect_ack(runner, job_id, "completed")
        second = client.submit(SPEC, CMD)
        assert (await take_job(runner))["job"] == second
    assert registered(rclient, keys, "r1")
    assert [e["event"] for e in job_events(rclient, keys, job_id)][-1] == "completed"


def test_add_runner_refuses_bad_input_and_writes_nothing(settings, rclient, keys):
    with Client(settings) as client:
        with pytest.raises(InvalidInput):
            client.add_runner("bad/name", [SPEC], ephemeral=True)
        with pytest.raises(InvalidInput):
            client.add_runner("vm-1", [], ephemeral=True)
        with pytest.raises(TypeError):
            client.add_runner("vm-1", SPEC, ephemeral=True)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            client.add_runner(7, [SPEC])  # type: ignore[arg-type]
    assert list(rclient.scan_iter(match=f"{keys.namespace}:*")) == []


def test_a_name_taken_stays_as_it_was(settings, rclient, keys):
    admin.add_runner(rclient, keys, "r1", [SPEC])
    before = rclient.hgetall(keys.runner("r1"))
    with Client(settings) as client, pytest.raises(InvalidInput, match="already exists"):
        client.add_runner("r1", [SPEC], ephemeral=True)
    assert rclient.hgetall(keys.runner("r1")) == before


@pytest.mark.parametrize("started", [False, True])
def test_an_attempt_ended_by_its_runners_ready_ends_the_ephemeral_runner(rclient, keys, started):
    """Rule 1: a runner back with its record still holding a job (its process restarted) says
    `ready`, which ends that attempt; for an ephemeral runner that ends the registration, as any
    other end of its one attempt does, and the same call gives it no second job."""
    groupkit.live_pod(rclient, keys)
    groupkit.run(rclient, functions.runner_add(keys, "vm-1", "h" * 64, [SPEC], ephemeral=True))
    conn = groupkit.run(rclient, functions.attach(keys, "vm-1", groupkit.POD))["conn"]
    assert groupkit.ready(rclient, keys, "vm-1", conn)["result"] == "idle"
    first = groupkit.submit(rclient, keys, spec=SPEC)
    other = groupkit.submit(rclient, keys, spec=SPEC)
    assert groupkit.runner_of(rclient, keys, first) == "vm-1"
    if started:
        reply = groupkit.run(rclient, functions.start(keys, "vm-1", first, 1))
        assert reply["result"] == "ok"
    again = groupkit.run(rclient, functions.attach(keys, "vm-1", groupkit.POD))["conn"]
    rclient.delete(keys.pod_inbox(groupkit.POD))  # (the match rang it already)
    assert groupkit.ready(rclient, keys, "vm-1", again) == {"result": "stale"}
    assert not registered(rclient, keys, "vm-1")
    # no job claimed: neither a second one nor the same one again
    assert groupkit.status(rclient, keys, other) == "pending"
    assert groupkit.status(rclient, keys, first) == ("failed" if started else "pending")
    assert rclient.sismember(keys.pod_inbox(groupkit.POD), "vm-1")  # its pod closes it (4001)
