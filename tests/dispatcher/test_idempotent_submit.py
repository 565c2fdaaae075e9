"""A submit is idempotent by job id: a producer that lost the reply, or met a Redis restart, sends
it again and gets the same job, never a second one. Real Redis, a real TCP proxy in front of it."""

from __future__ import annotations

import json
import threading
import uuid
from urllib.parse import urlsplit

import pytest

from dispatcher import functions
from dispatcher.client import Client
from dispatcher.errors import InvalidInput
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.dispatcher.support import RClient
from tests.netkit import TcpProxy

SPEC = "linux"


def submitted(rclient: RClient, keys: Keys) -> list[str]:
    return [f["job"] for _, f in rclient.xrange(keys.events) if f["event"] == "submitted"]


def test_the_same_submit_twice_is_one_job(rclient: RClient, keys: Keys) -> None:
    job_id = str(uuid.uuid4())
    call = functions.submit(keys, job_id, SPEC, json.dumps({"command": ["true"]}), 3, 60, 2)
    assert functions.run_sync(rclient, call) == job_id
    record = rclient.hgetall(keys.job(job_id))
    assert functions.run_sync(rclient, call) == job_id
    assert rclient.hgetall(keys.job(job_id)) == record
    assert submitted(rclient, keys) == [job_id]
    assert rclient.get(keys.seq) == "1"


@pytest.mark.parametrize(
    "change",
    [
        {"spec": "mac"},
        {"payload": json.dumps({"command": ["false"]})},
        {"priority": 4},
        {"timeout": 61},
        {"max_attempts": 1},
    ],
)
def test_other_content_under_a_used_id_is_refused(
    rclient: RClient, keys: Keys, change: dict[str, object]
) -> None:
    job_id = str(uuid.uuid4())
    args: dict[str, object] = {
        "spec": SPEC,
        "payload": json.dumps({"command": ["true"]}),
        "priority": 3,
        "timeout": 60,
        "max_attempts": 2,
    }
    functions.run_sync(rclient, functions.submit(keys, job_id, **args))  # type: ignore[arg-type]
    before = rclient.hgetall(keys.job(job_id))
    with pytest.raises(InvalidInput, match="already exists with different content"):
        functions.run_sync(
            rclient,
            functions.submit(keys, job_id, **{**args, **change}),  # type: ignore[arg-type]
        )
    assert rclient.hgetall(keys.job(job_id)) == before
    assert submitted(rclient, keys) == [job_id]


def test_client_takes_a_producer_id_and_refuses_a_bad_one(settings: Settings, keys: Keys) -> None:
    job_id = str(uuid.uuid4())
    with Client(settings) as client:
        assert client.submit(SPEC, {"command": ["true"]}, job_id=job_id) == job_id
        assert client.submit(SPEC, {"command": ["true"]}, job_id=job_id) == job_id
        with pytest.raises(ValueError, match="must be a UUID"):
            client.submit(SPEC, {"command": ["true"]}, job_id="not-a-uuid")
        with pytest.raises(InvalidInput, match="different content"):
            client.submit(SPEC, {"command": ["false"]}, job_id=job_id)


def _proxied(settings: Settings) -> tuple[TcpProxy, Settings]:
    url = urlsplit(settings.redis_url)
    proxy = TcpProxy((url.hostname or "127.0.0.1", url.port or 6379))
    db = url.path or "/0"
    return proxy, Settings(
        redis_url=f"redis://127.0.0.1:{proxy.port}{db}", namespace=settings.namespace
    )


def test_a_lost_reply_then_a_retry_makes_one_job(
    settings: Settings, rclient: RClient, keys: Keys
) -> None:
    proxy, via = _proxied(settings)
    proxy.up()
    try:
        with Client(via) as client:
            proxy.lose_next_reply.set()  # the submit reaches Redis; its reply never comes back
            job_id = client.submit(SPEC, {"command": ["true"]})
    finally:
        proxy.down()
    assert not proxy.lose_next_reply.is_set()  # the reply was indeed lost once
    assert submitted(rclient, keys) == [job_id]
    assert rclient.hget(keys.job(job_id), "status") == "pending"


def test_a_submit_during_a_redis_outage_lands_once_when_redis_is_back(
    settings: Settings, rclient: RClient, keys: Keys
) -> None:
    proxy, via = _proxied(settings)  # down: connections are refused, as during a restart
    result: list[str] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with Client(via) as client:
                result.append(client.submit(SPEC, {"command": ["true"]}))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        thread.join(0.5)  # part of the scenario: the outage lasts a while
        assert thread.is_alive(), errors
        proxy.up()
        thread.join(20)
    finally:
        proxy.down()
    assert not errors and len(result) == 1
    assert submitted(rclient, keys) == result
