"""``dispatch_v3_start`` with the pod and connection: an "ok" takes the runner out of that pod's
inbox only while Redis holds what the pod holds (real Redis, the functions called directly)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from dispatcher import functions
from dispatcher.keys import Keys
from tests.jobflow import POD, SPEC, FakePod

Start = Callable[..., dict[str, Any]]


@pytest.fixture
def taken(rclient: redis.Redis, keys: Keys) -> tuple[FakePod, str, int]:
    """r1 was offered a job, and its pod's inbox holds it (as a match's ring leaves it)."""
    pod = FakePod(rclient, keys)
    functions.run_sync(rclient, functions.submit(keys, "", SPEC, "{}", 0, 3600, 1))
    offer = pod.ready()
    assert offer["result"] == "job"
    rclient.sadd(keys.pod_inbox(POD), "r1")
    return pod, str(offer["job"]), int(offer["attempt"])


def start(rclient: redis.Redis, keys: Keys, job_id: str, attempt: int, **kw: Any) -> Any:
    return functions.run_sync(rclient, functions.start(keys, "r1", job_id, attempt, **kw))


def in_inbox(rclient: redis.Redis, keys: Keys) -> bool:
    return bool(rclient.sismember(keys.pod_inbox(POD), "r1"))


def test_ok_on_the_current_connection_settles_the_entry(
    rclient: redis.Redis, keys: Keys, taken: tuple[FakePod, str, int]
) -> None:
    pod, job_id, attempt = taken
    assert start(rclient, keys, job_id, attempt, pod=POD, conn=pod.conn) == {"result": "ok"}
    assert not in_inbox(rclient, keys)


def test_an_older_connection_leaves_the_entry(
    rclient: redis.Redis, keys: Keys, taken: tuple[FakePod, str, int]
) -> None:
    """The runner connected again (its conn moved on): the pod must still observe it (to close
    the older socket), so the entry stays although the start itself is accepted."""
    pod, job_id, attempt = taken
    newer = functions.run_sync(rclient, functions.attach(keys, "r1", POD))
    assert int(newer["conn"]) == pod.conn + 1
    assert start(rclient, keys, job_id, attempt, pod=POD, conn=pod.conn) == {"result": "ok"}
    assert in_inbox(rclient, keys)


def test_a_refused_start_leaves_the_entry(
    rclient: redis.Redis, keys: Keys, taken: tuple[FakePod, str, int]
) -> None:
    pod, job_id, attempt = taken
    assert functions.run_sync(rclient, functions.cancel(keys, job_id)) is True
    rclient.sadd(keys.pod_inbox(POD), "r1")
    reply = start(rclient, keys, job_id, attempt, pod=POD, conn=pod.conn)
    assert reply == {"result": "cancel", "reason": "canceled"}
    assert in_inbox(rclient, keys)


def test_without_pod_and_connection_the_entry_stays(
    rclient: redis.Redis, keys: Keys, taken: tuple[FakePod, str, int]
) -> None:
    """A caller of the older form (four arguments, as a pod of the previous release sends)."""
    _, job_id, attempt = taken
    assert start(rclient, keys, job_id, attempt) == {"result": "ok"}
    assert in_inbox(rclient, keys)


def test_only_the_named_pods_inbox_is_touched(
    rclient: redis.Redis, keys: Keys, taken: tuple[FakePod, str, int]
) -> None:
    pod, job_id, attempt = taken
    rclient.sadd(keys.pod_inbox("other-pod"), "r1")
    assert start(rclient, keys, job_id, attempt, pod=POD, conn=pod.conn) == {"result": "ok"}
    assert rclient.sismember(keys.pod_inbox("other-pod"), "r1")
