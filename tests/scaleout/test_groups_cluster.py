"""Concurrency groups and pause (issue 12, part A) on a Redis Cluster and on Sentinel: the group
and pause calls declare their keys, and what they find at run time (group queues, pending and
idle sets, runners) stays in the namespace's slot."""

from __future__ import annotations

import pytest

from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.dispatcher.support import SPEC, complete, ready_and_waiting, start_job
from tests.podkit import connect
from tests.scaleout.conftest import Backend, backend_settings

pytestmark = pytest.mark.timeout(120)
CMD = {"command": ["true"]}
BOUND = 10.0


@pytest.fixture
def settings(backend: Backend) -> Settings:
    # the doorbell, not the tick, must deliver
    return backend_settings(backend, reconcile_interval=30, pod_ttl=90)


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
