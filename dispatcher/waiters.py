"""One pub/sub connection per async client that wakes every `wait()` of that client.

Theory of operation: the Lua library publishes a job id on the namespace's done channel (sharded
pub/sub: SPUBLISH, so the subscription is an SSUBSCRIBE, on a cluster to the node serving the
namespace's slot) whenever a job becomes processed, failed or canceled. Any number of waiters
register an ``asyncio.Event`` under their job id; a single reader task reads the channel and sets
the events of the id it names. A waiter registers, makes sure the subscription is confirmed, and
only then reads the job's status, so a job that finishes in between is seen either by that read or
by the message. Pub/sub may lose messages (a reconnect, a slow client killed by Redis), so waiters
also re-check on a slow timer, and every re-subscribe (the reader sees a new confirmation after
redis-py reconnected) wakes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio

from dispatcher import redisconn

log = logging.getLogger(__name__)

RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class DoneWaiters:
    """Job id -> events of the tasks waiting for it, fed by one subscription to ``channel``."""

    def __init__(self, client: redis.asyncio.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._pubsub: redis.asyncio.client.PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._lock = asyncio.Lock()

    @contextlib.contextmanager
    def register(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``job_id`` is announced (or a lost message is possible)."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiters.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[job_id]

    async def subscribed(self) -> None:
        """Return once the subscription is confirmed by Redis (starting the reader if needed)."""
        if self._reader is None or self._reader.done():
            async with self._lock:
                if self._reader is None or self._reader.done():
                    self._subscribed.clear()
                    pubsub = await redisconn.async_pubsub(self._client, self._channel)
                    try:
                        await pubsub.ssubscribe(self._channel)
                    except BaseException:
                        # give the connection back: the pool is bounded
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                        raise
                    self._pubsub = pubsub
                    self._reader = asyncio.create_task(self._read(pubsub))
        await self._subscribed.wait()

    async def close(self) -> None:
        reader, pubsub = self._reader, self._pubsub
        self._reader = self._pubsub = None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        self._wake_all()

    async def _read(self, pubsub: redis.asyncio.client.PubSub) -> None:
        failures = 0
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                # redis-py reconnects and re-subscribes on the next read; meanwhile waiters
                # fall back on their re-check timer. After a few failures the subscription is
                # built afresh: on a cluster the channel's slot may have a new primary.
                self._subscribed.clear()
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning("done channel: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                if failures % 3 == 0:
                    pubsub = await self._renew(pubsub)
                continue
            failures = 0
            if message is not None:
                self._dispatch(message)
                if message.get("type") == "sunsubscribe":
                    pubsub = await self._renew(pubsub)

    async def _renew(self, old: redis.asyncio.client.PubSub) -> redis.asyncio.client.PubSub:
        with contextlib.suppress(redis.RedisError, OSError):
            await old.aclose()  # type: ignore[no-untyped-call]
        try:
            pubsub = await redisconn.async_pubsub(self._client, self._channel)
            await pubsub.ssubscribe(self._channel)
        except (redis.RedisError, OSError) as exc:
            log.warning("done channel: resubscribe failed: %s", exc)
            return old
        self._pubsub = pubsub
        return pubsub

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "sunsubscribe":
            # the server dropped the subscription (a cluster slot moved): subscribe again
            self._subscribed.clear()
            self._wake_all()
        elif kind == "ssubscribe":
            # first confirmation, or a re-subscribe after a reconnect: messages may have been
            # lost in between, so every waiter re-checks
            self._subscribed.set()
            self._wake_all()
        elif kind == "smessage":
            data = message.get("data")
            job_id = data.decode() if isinstance(data, bytes) else str(data)
            for event in self._waiters.get(job_id, ()):
                event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()
