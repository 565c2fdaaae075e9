"""Concurrency groups and pause (issue 12, part A) on a Redis Cluster and on Sentinel: the group
and pause calls declare their keys, and what they find at run time (group queues, pending and
idle sets, runners) stays in the namespace's slot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from dispatcher import redisconn
from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.dispatcher.conftest import stop_pod
from tests.dispatcher.support import SPEC, complete, ready_and_waiting, start_job
from tests.podkit import RunningPod, connect, start_pod
from tests.scaleout.conftest import Backend

pytestmark = pytest.mark.timeout(120)
CMD = {"command": ["true"]}
BOUND = 10.0


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return Settings(
        redis_url=backend.redis_url,
        results_redis_url=backend.results_redis_url,
        namespace=backend.namespace(),
        reconcile_interval=30,  # the doorbell, not the tick, must deliver
        heartbeat_interval=0.5,
        ping_interval=5,
        ping_timeout=5,
        pod_ttl=90,
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


async def test_a_group_slot_and_a_resume_hand_jobs_on_at_once(pod, settings, rclient) -> None:
    keys = Keys(settings.namespace)
    with Client(settings) as client:
        one = await connect(pod, "one", client.add_runner("one", [SPEC]))
        two = await connect(pod, "two", client.add_runner("two", [SPEC]))
        await ready_and_waiting(one, rclient, keys, poll_timeout=30)
        await ready_and_waiting(two, rclient, keys, poll_timeout=30)
        client.set_group_limit("org", 1)
        client.pause_runner("two")
        first = client.submit(SPEC, CMD, group="org")
        second = client.submit(SPEC, CMD, group="org")
        job = await one.expect("job", timeout=BOUND)
        assert job["job"] == first
        await start_job(one, job)
        assert client.get(second)["status"] == "pending"
        await complete(one, job)  # the slot is free, but `two` is paused
        assert client.get(second)["status"] == "pending"
        assert client.resume_runner("two")["job"] == second
        assert (await two.expect("job", timeout=BOUND))["job"] == second
        assert [(g["group"], g["inflight"]) for g in client.groups()] == [("org", 1)]
        assert [j["id"] for j in client.jobs(status="claimed")] == [second]
