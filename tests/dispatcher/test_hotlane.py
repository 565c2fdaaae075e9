"""The pod's hot lane (``dispatcher.hotlane``): pipelined FCALLs on one connection answer each
caller with its own reply, map error replies as redis-py does, and survive a killed connection."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis
import redis.asyncio

from dispatcher import functions, hotlane, redisconn
from dispatcher.errors import InvalidInput
from dispatcher.keys import Keys
from tests.dispatcher.support import RClient


@pytest.fixture
async def lane(redis_url: str):
    client = redisconn.async_client(redis_url, 4, 5.0)
    the_lane = hotlane.lane_for(redis_url, client)
    assert isinstance(the_lane, hotlane.HotLane)
    yield the_lane
    await the_lane.aclose()
    await client.aclose()


def _register(rclient: RClient, keys: Keys, names: list[str]) -> None:
    for name in names:
        functions.run_sync(rclient, functions.runner_add(keys, name, "x" * 64, ["linux"]))


async def test_concurrent_calls_each_get_their_own_reply(
    lane: hotlane.HotLane, rclient: RClient, keys: Keys
) -> None:
    names = [f"r{i}" for i in range(300)]
    registered = {name for name in names if random.random() < 0.5}
    _register(rclient, keys, sorted(registered))
    replies = await asyncio.gather(
        *(functions.run(lane, functions.observe(keys, "p1", name, "")) for name in names)
    )
    assert [bool(r["exists"]) for r in replies] == [name in registered for name in names]


async def test_error_replies_raise_what_redis_py_raises(
    lane: hotlane.HotLane, keys: Keys, redis_url: str
) -> None:
    with pytest.raises(redis.ResponseError) as ours:
        await lane.fcall("dispatch_no_such_function", 0)
    plain = redis.asyncio.Redis.from_url(redis_url)
    try:
        with pytest.raises(redis.ResponseError) as theirs:
            await plain.fcall("dispatch_no_such_function", 0)
    finally:
        await plain.aclose()
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)
    # a function's own error, translated by functions.run; the lane goes on working after both
    with pytest.raises(InvalidInput):
        await functions.run(lane, functions.submit(keys, "", "bad spec!", "{}", 0, 60, 1))
    reply = await functions.run(lane, functions.observe(keys, "p1", "nobody", ""))
    assert reply["exists"] is False


async def test_a_killed_connection_is_replaced_and_the_call_sent_again(
    lane: hotlane.HotLane, rclient: RClient, keys: Keys
) -> None:
    await functions.run(lane, functions.observe(keys, "p1", "nobody", ""))
    link = lane._link
    assert link is not None
    port = link.writer.get_extra_info("sockname")[1]
    victims = [c for c in rclient.client_list() if str(c["addr"]).endswith(f":{port}")]
    assert len(victims) == 1
    rclient.execute_command("CLIENT", "KILL", "ID", victims[0]["id"])
    for _ in range(3):  # whether or not the reader saw the close yet, every call succeeds
        reply = await functions.run(lane, functions.observe(keys, "p1", "nobody", ""))
        assert reply["exists"] is False
    assert lane._link is not None and lane._link is not link


def test_sentinel_and_cluster_urls_keep_the_redis_py_client() -> None:
    client = redisconn.async_client("redis://127.0.0.1:1/0", 1, 1.0)
    sentinel = "redis+sentinel://127.0.0.1:26379/mymaster/0"
    assert hotlane.lane_for(sentinel, client) is client
    assert hotlane.lane_for("redis+cluster://127.0.0.1:7000", client) is client
    assert isinstance(hotlane.lane_for("redis://127.0.0.1:1/0", client), hotlane.HotLane)
