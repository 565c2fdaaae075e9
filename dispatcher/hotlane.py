"""The pod's hot lane to Redis: every ``FCALL`` of the runner channel, pipelined on one connection.

Why (issue 11, measured with py-spy on the throughput scenario): through redis-py's asyncio
client, one ``FCALL`` cost the pod about as much CPU as everything else a lifecycle does together
— a pooled connection borrowed and returned under a ``Condition`` and a timeout, an
``asyncio.timeout`` around the send and another around the read, one ``send`` system call and
one read per call, argument encoding in Python. Here a call packs its command in C
(``hiredis.pack_command``), appends it to a buffer written once per event-loop pass (the calls of
every runner frame read in that pass share one system call, and Redis reads them in one go), and
waits on a plain future; one reader parses the replies (``hiredis.Reader``) and resolves the
futures in order. Redis runs each function atomically and in arrival order, as it does for calls
on separate connections: nothing about what a call does changes, only what it costs.

What redis-py's client gave the channel's calls, kept here:

- the connection is opened by redis-py itself (``connection_class(**connection_kwargs)`` of the
  pod's pool: the same URL, credentials, TLS, database, timeouts and keepalive), then only its
  streams are used;
- a connection error (Redis restarted, ``CLIENT KILL``, a reset) fails the calls in flight with
  ``redis.ConnectionError``; each is sent once more on a fresh connection, as the pool's
  ``Retry(NoBackoff(), 1)`` does (every function is safe to see twice: fenced, compare-and-set or
  idempotent by id). A reply that does not come within ``SOCKET_TIMEOUT`` fails the calls with
  ``redis.TimeoutError`` (not retried: the call may have run) and drops the connection;
- an error reply raises the exception redis-py would raise (``BaseParser.parse_error``).

Only a single server (``redis://``, ``rediss://``, ``unix://``) takes this lane: on Sentinel and
on a cluster ``lane_for`` returns the pod's redis-py client, which follows promotions and routes
by slot. Blocking commands never go here (one slow reply would hold every call behind it), nor
the WAIT/WAITAOF pair (``functions.run_then``), which needs a connection of its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import hiredis
import redis
import redis.asyncio
from redis._parsers.base import BaseParser

from dispatcher import redisconn, redisurl

log = logging.getLogger(__name__)

READ_CHUNK = 65536
WATCH_EVERY = 1.0  # s between looks at the oldest call waiting for its reply


class FcallClient(Protocol):
    """What ``functions.run`` needs of a client: redis-py's ``Redis`` or a ``HotLane``."""

    def fcall(self, function: str, numkeys: int, *keys_and_args: Any) -> Awaitable[Any]: ...

    def function_load(self, code: str, replace: bool | None = False) -> Awaitable[Any]: ...


def lane_for(url: str, client: redis.asyncio.Redis) -> FcallClient:
    """A hot lane beside ``client`` (the pod's pooled client of ``url``) on a single server;
    ``client`` itself on Sentinel or a cluster."""
    target = redisurl.parse(url)
    if target.sentinel or target.cluster:
        return client
    return HotLane(client)


def _encode(arg: Any) -> Any:
    # as redis-py's Encoder: a float by repr (hiredis would print it with %.17g)
    return repr(arg) if isinstance(arg, float) else arg


class _Link:
    """One open connection: its streams, its reader task, the calls awaiting their replies."""

    __slots__ = ("connection", "flushing", "out", "pending", "reader", "task", "writer")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.reader: asyncio.StreamReader = connection._reader
        self.writer: asyncio.StreamWriter = connection._writer
        # (future, time sent) of every call written and not answered yet, oldest first
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.out: list[bytes] = []  # commands to write at the end of this event-loop pass
        self.flushing = False  # a write of ``out`` is scheduled


class HotLane:
    """Pipelined ``FCALL``s on one connection of the server ``client`` talks to."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        self._watch: asyncio.TimerHandle | None = None

    # -- the calls ------------------------------------------------------------------------------

    async def fcall(self, function: str, numkeys: int, *keys_and_args: Any) -> Any:
        """``FCALL function numkeys key... arg...``: its reply, or the exception redis-py raises."""
        if float in map(type, keys_and_args):
            keys_and_args = tuple(_encode(a) for a in keys_and_args)
        command = hiredis.pack_command(("FCALL", function, numkeys, *keys_and_args))
        try:
            return await self._call(command)
        except redis.ConnectionError:
            return await self._call(command)  # once more on a fresh connection

    async def function_load(self, code: str, replace: bool | None = False) -> Any:
        return await self._client.function_load(code, replace=replace)

    async def _call(self, command: bytes) -> Any:
        link = self._link
        if link is None:
            link = await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        idle = not link.pending  # nothing in flight: write now, no loop pass waited for
        link.pending.append((future, time.monotonic()))
        link.out.append(command)
        if not link.flushing:
            if idle:
                self._flush(link)
            else:  # the calls made in this loop pass go out in one write
                link.flushing = True
                loop.call_soon(self._flush, link)
        return await future

    def _flush(self, link: _Link) -> None:
        link.flushing = False
        out, link.out = link.out, []
        if link is not self._link:  # dropped meanwhile: its calls failed already
            return
        try:
            link.writer.write(out[0] if len(out) == 1 else b"".join(out))
        except Exception as exc:
            self._drop(link, redis.ConnectionError(f"Error writing to Redis: {exc}"))

    # -- the connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection now (the pod's start), not on the first call."""
        if self._link is None:
            await self._connect()

    async def _connect(self) -> _Link:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            connection = self._pool.connection_class(**self._pool.connection_kwargs)
            await connection.connect()  # type: ignore[no-untyped-call]
            link = _Link(connection)
            link.task = loop.create_task(self._read(link), name="redis-hot-lane")
            self._link = link
            self._connecting.set_result(link)
            if self._watch is None:
                self._watch = loop.call_later(WATCH_EVERY, self._watchdog)
            return link
        except BaseException as exc:
            self._connecting.set_exception(
                exc if isinstance(exc, Exception) else redis.ConnectionError("connect cancelled")
            )
            self._connecting.exception()  # retrieved: a caller may not be waiting on it
            raise
        finally:
            self._connecting = None

    async def _read(self, link: _Link) -> None:
        parser = hiredis.Reader()
        pending = link.pending
        error: Exception = redis.ConnectionError("Connection closed by server.")
        try:
            while True:
                data = await link.reader.read(READ_CHUNK)
                if not data:
                    break
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    if not pending:
                        error = redis.InvalidResponse("a reply nobody asked for")
                        return
                    future, _ = pending.popleft()
                    if future.done():  # its caller was cancelled: the reply is dropped
                        continue
                    if isinstance(reply, hiredis.ReplyError):
                        future.set_exception(BaseParser.parse_error(str(reply)))  # type: ignore[no-untyped-call]
                    else:
                        future.set_result(reply)
        except asyncio.CancelledError:
            error = redis.ConnectionError("the hot lane is closed")
        except hiredis.ProtocolError as exc:
            error = redis.InvalidResponse(f"Protocol error: {exc}")
        except Exception as exc:
            error = redis.ConnectionError(f"Error while reading from Redis: {exc}")
        finally:
            self._drop(link, error)

    def _drop(self, link: _Link, error: Exception) -> None:
        """Fail every call waiting on ``link`` with ``error`` and close it (once)."""
        if self._link is link:
            self._link = None
        while link.pending:
            future, _ = link.pending.popleft()
            if not future.done():
                future.set_exception(error)
                future.exception()  # a cancelled caller never reads it
        if link.task is not None and link.task is not asyncio.current_task():
            link.task.cancel()
        with contextlib.suppress(Exception):
            link.writer.close()
        # redis-py's connection no longer owns open streams (it would warn when collected)
        link.connection._reader = link.connection._writer = None

    def _watchdog(self) -> None:
        """A reply overdue by ``SOCKET_TIMEOUT`` drops the connection (a half-open TCP flow)."""
        self._watch = None
        link = self._link
        if link is not None and link.pending:
            waited = time.monotonic() - link.pending[0][1]
            if waited > redisconn.SOCKET_TIMEOUT:
                log.warning("Redis did not answer in %.0f s; reconnecting the hot lane", waited)
                self._drop(link, redis.TimeoutError("Timeout reading from socket"))
        if link is not None:  # idle without a connection: the next connect restarts it
            self._watch = asyncio.get_running_loop().call_later(WATCH_EVERY, self._watchdog)

    async def aclose(self) -> None:
        """Close the connection (a later call opens a new one, as redis-py's client does)."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        link = self._link
        if link is not None:
            self._drop(link, redis.ConnectionError("the hot lane is closed"))
            with contextlib.suppress(Exception):
                await link.writer.wait_closed()
