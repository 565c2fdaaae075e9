"""Fixtures of the result-writer tests: an undecoded Redis connection (like rq's), a real
PostgreSQL for the postgres sink, and a real local HTTP server for the webhook sink."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
import redis

from tests.worker_bridge.httpkit import HookServer

# The PostgreSQL the sink tests use (trust auth on loopback, as `.ci/run` makes sure of).
POSTGRES_URL = os.environ.get(
    "DISPATCHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A connection that does not decode, like an rq worker's."""
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL answers at {POSTGRES_URL} ({str(exc).strip()[:80]})")
    return POSTGRES_URL


@pytest.fixture
def hook() -> Iterator[HookServer]:
    server = HookServer()
    server.start()
    yield server
    server.stop()
