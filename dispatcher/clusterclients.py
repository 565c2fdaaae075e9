"""The Redis Cluster clients ``redisconn`` builds: redis-py's, made to behave like the
single-server clients the dispatcher was written against.

- **FCALL is routed by the keys it declares.** redis-py's ``RedisCluster`` (sync and asyncio, 5.x
  to 8.x) finds the slot of a command whose key positions are "movable" — ``FCALL`` and
  ``FCALL_RO`` among them — by sending ``COMMAND GETKEYS`` to a node first, twice per call (once to
  choose the routing policy, once to pick the node): three round trips per function call instead
  of one. It special-cases ``EVAL``/``EVALSHA`` but not ``FCALL``, whose keys sit at the same place
  (``FCALL name numkeys key...``). Found with ``python -m bench.capacity``: dispatch p50 on a
  cluster was 1.4x a standalone server's, and ``INFO commandstats`` counted 2 ``command|getkeys``
  per ``fcall``. Every other command (and an ``FCALL`` without keys, or whose numkeys is not a
  usable count) takes redis-py's own path.
- **A burst queues instead of failing.** On one server the pods use a blocking pool: past
  ``max_connections`` a command waits up to ``timeout`` s for a connection. redis-py's asyncio
  cluster client raises ``MaxConnectionsError`` (with an empty message) at once instead, so 100
  runners connecting together failed their handshakes with 503 and closed live runners' sockets.
  ``AsyncRedisCluster`` lets at most ``max_connections`` commands and pipelines run at a time and
  makes the others wait, up to ``timeout`` s, then raise ``redis.ConnectionError``. A command
  redis-py sends from inside a pipeline (a redirected one) runs on its caller's turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
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
    """``redis.asyncio.RedisCluster`` routing FCALL by its declared keys, with at most
    ``max_connections`` commands in flight; the others wait up to ``queue_timeout`` s (None:
    without a limit) for their turn."""

    def __init__(self, *args: Any, queue_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue_timeout = queue_timeout
        self._turns = asyncio.Semaphore(int(kwargs.get("max_connections", 2**31)))
        self._holding: ContextVar[bool] = ContextVar(f"cluster-turn-{id(self)}", default=False)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """One of the ``max_connections`` turns (the caller's own when it holds one already)."""
        if self._holding.get():
            yield
            return
        try:
            await asyncio.wait_for(self._turns.acquire(), self._queue_timeout)
        except TimeoutError:
            raise redis.ConnectionError(
                f"no free Redis connection within {self._queue_timeout:g} s"
            ) from None
        token = self._holding.set(True)
        try:
            yield
        finally:
            self._holding.reset(token)
            self._turns.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> redis.asyncio.cluster.ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _Pipeline(self, transaction)  # type: ignore[abstract]

    async def _determine_slot(self, command: str, *args: Any) -> int:
        keys = declared_keys((command, *args))
        if keys is None:
            return await super()._determine_slot(command, *args)
        return _one_slot(command, {self.keyslot(key) for key in keys})


class _Pipeline(redis.asyncio.cluster.ClusterPipeline):
    """A pipeline that runs on one of its client's turns."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client = self.cluster_client
        assert isinstance(client, AsyncRedisCluster)
        async with client.turn():
            return await super().execute(raise_on_error, allow_redirections)
