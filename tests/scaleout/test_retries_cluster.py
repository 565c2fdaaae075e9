"""Retries and ephemeral runners (issue 12, part B) on a Redis Cluster and on Sentinel: the calls
that re-queue a failed attempt, move a delayed retry (the pods' tick) and retire an ephemeral
runner declare their keys and stay in the namespace's slot."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from dispatch_protocol import closecodes
from dispatcher.client import Client
from dispatcher.keys import Keys
from tests.dispatcher.support import SPEC, eventually, expect_ack, start_job, take_job
from tests.podkit import connect

pytestmark = pytest.mark.timeout(120)
CMD = {"command": ["false"]}


async def fail(runner: Any, job: dict[str, Any]) -> None:
    await runner.send("failed", job=job["job"], attempt=job["attempt"], exit_code=2, error="no")
    await expect_ack(runner, job["job"], "failed")


async def test_a_delayed_retry_then_completion(pod, settings, rclient) -> None:
    keys = Keys(settings.namespace)
    with Client(settings) as client:
        runner = await connect(pod, "r1", client.add_runner("r1", [SPEC]))
        job_id = client.submit(SPEC, CMD, retries=1, retry_delay=0.3)
        first = await take_job(runner)
        await start_job(runner, first)
        await fail(runner, first)
        assert rclient.zscore(keys.delayed, job_id) is not None
        second = await take_job(runner, timeout=10)  # moved by the tick, then matched
        assert (second["job"], second["attempt"]) == (job_id, 2)
        await start_job(runner, second)
        await runner.send("completed", job=job_id, attempt=2, exit_code=0)
        await expect_ack(runner, job_id, "completed")
        record = client.get(job_id)
    assert (record["status"], record["retries_used"]) == ("completed", 1)
    assert [(a["attempt"], a["status"]) for a in record["attempts"]] == [
        (1, "failed"),
        (2, "completed"),
    ]


async def test_an_ephemeral_runner_is_retired_by_its_result(pod, settings, rclient) -> None:
    keys = Keys(settings.namespace)
    with Client(settings) as client:
        token = client.add_runner("vm-1", [SPEC], ephemeral=True)
        runner = await connect(pod, "vm-1", token)
        job_id = client.submit(SPEC, {"command": ["true"]})
        job = await take_job(runner)
        await start_job(runner, job)
        await runner.send("completed", job=job_id, attempt=1, exit_code=0)
        await expect_ack(runner, job_id, "completed")
        assert (await runner.closed())[0] == closecodes.REVOKED
    assert not rclient.exists(keys.runner("vm-1"))
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(
            pod.ws_url("vm-1"), additional_headers={"Authorization": f"Bearer {token}"}
        )
    assert refused.value.response.status_code == 401


async def test_a_canceled_job_retires_its_ephemeral_runner(pod, settings, rclient) -> None:
    keys = Keys(settings.namespace)
    with Client(settings) as client:
        runner = await connect(pod, "vm-1", client.add_runner("vm-1", [SPEC], ephemeral=True))
        job_id = client.submit(SPEC, {"command": ["true"]})
        await start_job(runner, await take_job(runner))
        assert client.cancel(job_id) is True
        await eventually(lambda: not rclient.exists(keys.runner("vm-1")), timeout=10)
        assert (await asyncio.wait_for(runner.closed(), 10))[0] == closecodes.REVOKED
