"""FCALL on a cluster goes straight to the slot of its declared keys: no ``COMMAND GETKEYS``
round trips first (redis-py asks the server twice per call otherwise; found by bench.capacity)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import RedisClusterException

from bench import shards
from bench.servers import cluster_command
from dispatcher import clusterroute, redisconn, redisurl
from tests.scaleout.conftest import Backend

pytestmark = pytest.mark.timeout(60)
CALLS = 40


@pytest.mark.parametrize(
    ("args", "keys"),
    [
        (("FCALL", "f", 1, "{a}:x", "arg"), ("{a}:x",)),
        (("fcall_ro", "f", "2", "{a}:x", "{a}:y"), ("{a}:x", "{a}:y")),
        ((b"FCALL", "f", b"1", "k"), ("k",)),
        (("FCALL", "f", 0, "arg"), None),  # no keys: redis-py's own path
        (("FCALL", "f", "x", "k"), None),  # numkeys not a number
        (("FCALL", "f", -1, "k"), None),
        (("FCALL", "f", 3, "k"), None),  # fewer keys than declared
        (("EVAL", "return 1", 1, "k"), None),
        (("HGET", "k", "f", "g"), None),
        (("FCALL",), None),
    ],
)
def test_declared_keys(args: tuple[Any, ...], keys: tuple[Any, ...] | None) -> None:
    found = clusterroute.declared_keys(args)
    assert (tuple(found) if found is not None else None) == keys


def getkeys_and_fcalls(ports: list[int]) -> tuple[int, dict[int, int]]:
    getkeys, fcalls = 0, {}
    for port in ports:
        client = redis.Redis(port=port)
        stats = client.info("commandstats")
        client.close()
        getkeys += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
        fcalls[port] = int(stats.get("cmdstat_fcall", {}).get("calls", 0))
    return getkeys, fcalls


@pytest.fixture
def ports(cluster: Backend) -> Iterator[list[int]]:
    yield [port for _host, port in redisurl.parse(cluster.redis_url).hosts]


def _check(ports: list[int], before: tuple[int, dict[int, int]], key: str) -> None:
    getkeys, fcalls = getkeys_and_fcalls(ports)
    assert getkeys == before[0]
    slot = int(cluster_command(ports[0], "KEYSLOT", key))  # asked of Redis
    owner = shards.owner(shards.parse_nodes(cluster_command(ports[0], "NODES")), slot)
    assert owner is not None
    grew = {p: fcalls[p] - before[1][p] for p in ports if fcalls[p] != before[1][p]}
    assert grew == {owner.port: CALLS}


def test_sync_cluster_client_routes_fcall_by_its_keys(cluster: Backend, ports: list[int]) -> None:
    client = redisconn.sync_client(cluster.redis_url, decode_responses=True)
    key = "{route-sync}:k"
    client.ping()
    before = getkeys_and_fcalls(ports)
    for _ in range(CALLS):  # an unknown function: the error comes from the node of the slot
        with pytest.raises(redis.ResponseError, match="Function not found"):
            client.fcall("no_such_function", 1, key)
    _check(ports, before, key)
    with pytest.raises(RedisClusterException, match="same key slot"):
        client.fcall("no_such_function", 2, "{a}:k", "{b}:k")
    client.close()


async def test_async_cluster_client_routes_fcall_by_its_keys(
    cluster: Backend, ports: list[int]
) -> None:
    client = redisconn.async_client(cluster.redis_url, 4, 5.0, decode_responses=True)
    key = "{route-async}:k"
    await client.ping()
    before = getkeys_and_fcalls(ports)
    for _ in range(CALLS):
        with pytest.raises(redis.ResponseError, match="Function not found"):
            await client.fcall("no_such_function", 1, key)
    _check(ports, before, key)
    with pytest.raises(RedisClusterException, match="same key slot"):
        await client.fcall("no_such_function", 2, "{a}:k", "{b}:k")
    await client.aclose()
