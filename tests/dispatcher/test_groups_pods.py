"""Concurrency groups with real pods and WebSocket runners: a group job that ends hands its slot
to a runner waiting on another pod at once (the doorbell, not the tick), and the pods publish
DISPATCHER_GROUP_DEFAULT_LIMIT."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.dispatcher.groupkit import RClient
from tests.dispatcher.support import complete, ready_and_waiting, start_job
from tests.podkit import add_runner, connect

BOUND = 10.0  # generous on a busy machine; the 30 s tick proves the doorbell did the work


def slow_tick(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, reconcile_interval=30, pod_ttl=90, **changes)


async def test_a_finished_group_job_reaches_a_runner_waiting_on_another_pod_at_once(
    launch, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    a, b = await launch(slow_tick(settings)), await launch(slow_tick(settings))
    first = await connect(a, "first", add_runner(settings, "first", ["linux"]))
    second = await connect(b, "second", add_runner(settings, "second", ["linux"]))
    await ready_and_waiting(first, rclient, keys, poll_timeout=30)
    await ready_and_waiting(second, rclient, keys, poll_timeout=30)
    with Client(settings) as client:
        client.set_group_limit("org-42", 1)
        one = client.submit("linux", {"command": ["true"]}, group="org-42")
        two = client.submit("linux", {"command": ["true"]}, group="org-42")
        offered = await first.expect("job", timeout=BOUND)
        assert offered["job"] == one
        await start_job(first, offered)
        await second.silent(0.5)  # the group is full: the second job waits
        assert client.get(two)["status"] == "pending"
        started = time.monotonic()
        await complete(first, offered)
        got = await second.expect("job", timeout=BOUND)
        assert got["job"] == two and time.monotonic() - started < BOUND
        listed = {g["group"]: g for g in client.groups()}
        assert (listed["org-42"]["limit"], listed["org-42"]["inflight"]) == (1, 1)


async def test_the_pods_publish_the_default_group_limit(
    launch, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    await launch(slow_tick(settings, group_default_limit=3))
    assert rclient.hget(keys.config, "group_default_limit") == "3"
    with Client(settings) as client:
        client.submit("linux", {"command": ["true"]}, group="newcomer")
        assert [g["limit"] for g in client.groups()] == [3]
