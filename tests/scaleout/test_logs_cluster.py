"""Live logs (issue 12, part C) on a Redis Cluster and on Sentinel: `log` frames stored through a
pod, read and followed by both clients (XREAD BLOCK on the namespace's node), and the log's TTL
set by the writers' `record` call, all in the namespace's slot."""

from __future__ import annotations

import threading

import pytest

from dispatcher import functions
from dispatcher.client import AsyncClient, Client
from dispatcher.keys import Keys
from tests.dispatcher.support import SPEC, expect_ack, start_job, take_job
from tests.podkit import connect

pytestmark = pytest.mark.timeout(120)


async def test_logs_are_stored_followed_and_expire_with_the_record(pod, settings, rclient):
    keys = Keys(settings.namespace)
    with Client(settings) as client:
        runner = await connect(pod, "r1", client.add_runner("r1", [SPEC]))
        job_id = client.submit(SPEC, {"command": ["true"]})
        job = await take_job(runner)
        await start_job(runner, job)
        followed: list[str] = []
        follower = threading.Thread(
            target=lambda: followed.extend(c.data for c in client.logs(job_id, follow=True))
        )
        follower.start()
        for seq in range(20):
            frame = {"job": job_id, "attempt": job["attempt"], "seq": seq, "stream": "stdout"}
            await runner.send("log", **frame, data=f"line {seq}\n")
        await runner.send("completed", job=job_id, attempt=job["attempt"], exit_code=0)
        await expect_ack(runner, job_id, "completed")
        follower.join(30)
        assert followed == [f"line {i}\n" for i in range(20)]
    async with AsyncClient(settings) as aclient:
        got = [c.data async for c in aclient.logs(job_id, follow=True)]
    assert got == followed
    record = functions.record(keys, [f"{job_id}:{job['attempt']}"], 600, [])
    assert functions.run_sync(rclient, record)[0] == ("processed", True)
    assert 0 < rclient.ttl(keys.log(job_id)) <= 600
