"""The submit-time payload check agrees with what the reference runner accepts; the clients apply
it only when asked (the dispatcher itself carries any JSON payload)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from dispatcher.client import AsyncClient, Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from dispatcher.submission import check_runner_payload
from runner.executor import PayloadError, parse_payload
from tests.jobflow import SPEC

PAYLOADS: list[Any] = [
    {"command": ["make", "test"]},
    {"script": "make test"},
    {"script": ""},
    {"command": ["ls"], "env": {"A": "1"}, "cwd": "sub/dir", "outputs": ["out.txt"]},
    {"command": ["ls"], "env": None, "outputs": None},
    {},
    {"env": {"A": "1"}},
    {"command": []},
    {"command": "make test"},
    {"command": ["make", 1]},
    {"command": ["ls"], "script": "ls"},
    {"script": 5},
    {"script": "x", "env": {"A": 1}},
    {"script": "x", "env": ["A"]},
    {"script": "x", "cwd": 5},
    {"script": "x", "cwd": "/abs"},
    {"script": "x", "cwd": "a/../../b"},
    {"script": "x", "outputs": "a.txt"},
    {"script": "x", "outputs": ["/etc/passwd"]},
    {"script": "x", "outputs": ["ok.txt", "../up.txt"]},
    None,
    [],
    "make test",
    3,
]


def runner_accepts(payload: Any) -> bool:
    try:
        parse_payload(payload)
    except PayloadError:
        return False
    return True


def check_accepts(payload: Any) -> bool:
    try:
        check_runner_payload(payload)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("payload", PAYLOADS, ids=repr)
def test_the_check_agrees_with_the_reference_runner(payload: Any) -> None:
    assert check_accepts(payload) == runner_accepts(payload)


def namespace_keys(rclient: redis.Redis, keys: Keys) -> list[str]:
    return list(rclient.scan_iter(match=f"{keys.namespace}:*", count=1000))


def test_clients_check_only_when_asked(settings: Settings, rclient: redis.Redis, keys: Keys):
    with Client(settings) as client:
        with pytest.raises(ValueError, match="neither 'command'"):
            client.submit(SPEC, {"t0": 1}, check_payload=True)
        assert namespace_keys(rclient, keys) == []
        job_id = client.submit(SPEC, {"t0": 1})  # other runners, other conventions
        assert client.get(job_id)["payload"] == {"t0": 1}


async def test_async_client_checks_when_asked(
    settings: Settings, rclient: redis.Redis, keys: Keys
) -> None:
    async with AsyncClient(settings) as client:
        with pytest.raises(ValueError, match="both 'command' and 'script'"):
            await client.submit(SPEC, {"command": ["a"], "script": "b"}, check_payload=True)
        assert namespace_keys(rclient, keys) == []
        job_id = await client.submit(SPEC, {"script": "b"}, check_payload=True)
        assert (await client.get(job_id))["payload"] == {"script": "b"}
