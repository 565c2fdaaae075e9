"""The cluster clients of ``dispatcher.clusterclients`` on a real cluster: FCALL goes straight to
the slot of its declared keys (no ``COMMAND GETKEYS`` round trips first), and a burst of commands
past ``max_connections`` waits for its turn instead of failing (both found by bench.capacity)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import RedisClusterException

from bench import shards
from bench.servers import cluster_command
from dispatcher import clusterclients, redisconn, redisurl
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
    found = clusterclients.declared_keys(args)
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


async def test_a_burst_past_max_connections_waits_for_its_turn(cluster: Backend) -> None:
    client = redisconn.async_client(cluster.redis_url, 2, 10.0, decode_responses=True)
    key = "{burst-" + uuid.uuid4().hex + "}:n"
    await client.ping()
    replies = await asyncio.gather(*(client.incr(key) for _ in range(200)))
    assert sorted(replies) == list(range(1, 201))

    async def pipelined() -> list[Any]:  # as the pod's handshake does
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.get(key)
            return list(await pipe.execute())

    both = await asyncio.gather(
        *(pipelined() for _ in range(100)), *(client.incr(key) for _ in range(100))
    )
    assert await client.get(key) == "400"
    assert all(len(r) == 2 for r in both[:100])
    await client.aclose()


def blpop_waiting(ports: list[int]) -> bool:
    for port in ports:
        node = redis.Redis(port=port, decode_responses=True)
        clients = node.client_list()
        node.close()
        if any(c.get("cmd") == "blpop" for c in clients):
            return True
    return False


async def test_a_command_that_waits_longer_than_the_timeout_fails_clearly(
    cluster: Backend, ports: list[int]
) -> None:
    client = redisconn.async_client(cluster.redis_url, 1, 0.2, decode_responses=True)
    key = "{wait-" + uuid.uuid4().hex + "}:list"
    await client.ping()

    async def pop() -> Any:
        return await client.blpop([key], timeout=5)

    holder = asyncio.create_task(pop())  # holds the only turn
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not blpop_waiting(ports):
        assert loop.time() < deadline, "the BLPOP never reached Redis"
        await asyncio.sleep(0.02)
    with pytest.raises(redis.ConnectionError, match=r"no free Redis connection within 0\.2 s"):
        await client.get(key)
    pusher = redisconn.sync_client(cluster.redis_url, decode_responses=True)
    pusher.rpush(key, "x")  # ends the BLPOP: its turn comes back
    pusher.close()
    assert tuple(await holder) == (key, "x")
    assert await client.get(key) is None
    await client.aclose()
