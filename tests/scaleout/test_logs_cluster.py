"""Live logs (issue 12, part C) on a Redis Cluster and on Sentinel: `log` frames stored through a
pod, read and followed by both clients (XREAD BLOCK on the namespace's node), and the log's TTL
set by the writers' `record` call, all in the namespace's slot."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from dispatcher import functions, redisconn
from dispatcher.client import AsyncClient, Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.dispatcher.conftest import stop_pod
from tests.dispatcher.support import SPEC, expect_ack, start_job, take_job
from tests.podkit import RunningPod, connect, start_pod
from tests.scaleout.conftest import Backend

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return Settings(
        redis_url=backend.redis_url,
        results_redis_url=backend.results_redis_url,
        namespace=backend.namespace(),
        reconcile_interval=0.1,
        heartbeat_interval=0.5,
        ping_interval=5,
        ping_timeout=5,
        pod_ttl=3,
    )


@pytest.fixture
def rclient(settings: Settings) -> Iterator[Any]:
    client = redisconn.sync_client(settings.redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
async def pod(settings: Settings) -> AsyncIterator[RunningPod]:
    running = await start_pod(settings)
    yield running
    await stop_pod(running)


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
