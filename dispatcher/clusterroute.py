"""Cluster clients that route ``FCALL`` by the keys the call declares, without asking Redis.

redis-py's ``RedisCluster`` (sync and asyncio, 5.x to 8.x) finds the slot of a command whose key
positions are "movable" — ``FCALL`` and ``FCALL_RO`` among them — by sending ``COMMAND GETKEYS``
to a node first, and it does so twice per call (once to choose the routing policy, once to pick
the node): every function call cost three round trips instead of one. It special-cases ``EVAL``
and ``EVALSHA`` but not ``FCALL``, whose keys sit at the same place (``FCALL name numkeys
key...``). Measured with ``python -m bench.capacity``: dispatch p50 on a cluster was 1.4x a
standalone server's before this, and ``INFO commandstats`` showed 2 ``command|getkeys`` per
``fcall``. These subclasses read the declared keys instead; every other command (and an ``FCALL``
without keys, or one whose numkeys is not a usable count) takes redis-py's own path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.cluster
from redis.exceptions import RedisClusterException

FUNCTION_CALLS = frozenset({"FCALL", "FCALL_RO"})


def declared_keys(args: Sequence[Any]) -> Sequence[Any] | None:
    """The keys of ``(command, function, numkeys, key..., arg...)`` when the command is an FCALL
    declaring at least one key; None otherwise (redis-py then routes the command itself)."""
    if len(args) < 4:
        return None
    command = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    if command.upper() not in FUNCTION_CALLS:
        return None
    try:
        count = int(args[2])
    except (TypeError, ValueError):
        return None
    if count <= 0 or 3 + count > len(args):
        return None
    return args[3 : 3 + count]


def _one_slot(command: Any, slots: set[int]) -> int:
    if len(slots) != 1:
        raise RedisClusterException(f"{command} - all keys must map to the same key slot")
    return slots.pop()


class RedisCluster(redis.cluster.RedisCluster):
    """``redis.RedisCluster`` routing FCALL by its declared keys."""

    def determine_slot(self, *args: Any) -> int | None:
        keys = declared_keys(args)
        if keys is None:
            slot: int | None = super().determine_slot(*args)
            return slot
        return _one_slot(args[0], {self.keyslot(key) for key in keys})  # type: ignore[no-untyped-call]


class AsyncRedisCluster(redis.asyncio.RedisCluster):
    """``redis.asyncio.RedisCluster`` routing FCALL by its declared keys."""

    async def _determine_slot(self, command: str, *args: Any) -> int:
        keys = declared_keys((command, *args))
        if keys is None:
            return await super()._determine_slot(command, *args)
        return _one_slot(command, {self.keyslot(key) for key in keys})
