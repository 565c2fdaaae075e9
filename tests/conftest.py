"""Shared fixtures: a real Redis, one fresh namespace per test, real dispatcher pods."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from dispatcher import functions
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.redis_server import redis_for_tests


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_for_tests(os.environ.get("DISPATCHER_REDIS_URL")) as url:
        # this checkout's library, even where a Redis kept an older build under the same name
        with redis.Redis.from_url(url) as client:
            functions.load_library_sync(client)
        yield url


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    ns = "t" + uuid.uuid4().hex[:12]
    yield ns
    client = redis.Redis.from_url(redis_url)
    names = list(client.scan_iter(match=f"{ns}:*", count=1000))
    names += list(client.scan_iter(match=f"rq:*{ns}*", count=1000))
    if names:
        client.delete(*names)
    client.srem("rq:queues", f"rq:queue:{Keys(ns).results_queue}")
    client.close()


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


@pytest.fixture
def settings(redis_url: str, namespace: str) -> Settings:
    """Short timeouts so lease and deadline tests run in seconds."""
    return Settings(
        redis_url=redis_url,
        namespace=namespace,
        reconcile_interval=0.2,
        heartbeat_interval=0.5,
        ping_interval=5,
        ping_timeout=5,
        pod_ttl=3,
    )


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()
