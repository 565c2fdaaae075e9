"""The long poll of one runner connection: holding it open, ending it, lingering after it.

Pub/sub mode: the poll waits for a doorbell until its timeout, then `no_job`; the runner then
lingers in Redis's idle sets for ``DISPATCHER_LINGER`` s so that its next `ready` needs no Redis
call (see ``dispatcher.session``). Poll mode (``DISPATCHER_WAKE=poll``, the baseline this project
replaces): the pod asks Redis for a job once per poll interval instead.

A mixin of ``Pod``: it uses the pod's Redis client, keys, settings, ``deliver``, ``observe`` and
``spawn``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import redis.asyncio

from dispatch_protocol import messages
from dispatcher import functions
from dispatcher.doorbell import Offer
from dispatcher.keys import Keys
from dispatcher.session import Event, State
from dispatcher.settings import Settings
from dispatcher.sockets import RunnerSocket

log = logging.getLogger(__name__)

CLOSE_INTERNAL = 1011


class LongPoll:
    """Long-poll behaviour of a pod (mixed into ``Pod``)."""

    redis: redis.asyncio.Redis
    keys: Keys
    settings: Settings

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        raise NotImplementedError

    async def deliver(self, sock: RunnerSocket, offer: Offer) -> None:
        raise NotImplementedError

    async def observe(self, runner: str) -> None:
        raise NotImplementedError

    def arm_poll(self, sock: RunnerSocket, seconds: float) -> None:
        """Hold the poll open: until the deadline (pub/sub) or retrying each poll interval."""
        poll = sock.session.poll
        loop = asyncio.get_running_loop()
        if self.settings.wake == "poll":
            self._arm_poll_try(sock, poll, loop.time() + seconds)
            return
        sock.poll_timer = loop.call_later(seconds, lambda: self.spawn(self.expire_poll(sock, poll)))

    async def expire_poll(self, sock: RunnerSocket, poll: int) -> None:
        """The long poll expired: `no_job`, and linger in the idle sets (no Redis call)."""
        if sock.closed or sock.session.state is not State.POLLING or sock.session.poll != poll:
            return
        if self.settings.linger <= 0:  # no lingering: leave the idle sets with the `no_job`
            await self.end_poll(sock, poll)
            return
        sock.session.fire(Event.LINGER)
        sock.held_offer, sock.listed = None, True
        loop = asyncio.get_running_loop()
        sock.poll_timer = loop.call_later(
            self.settings.linger, lambda: self.spawn(self.end_linger(sock, poll))
        )
        await sock.send(messages.NoJob())

    async def end_linger(self, sock: RunnerSocket, poll: int) -> None:
        """No `ready` came after `no_job`: leave the idle sets, handing back a held job."""
        if sock.closed or sock.session.state is not State.LINGERING or sock.session.poll != poll:
            return
        sock.session.fire(Event.LINGER_END)
        sock.held_offer = None
        # a `ready` arriving meanwhile must reach Redis after this call, not before it (this call
        # would take the runner out of the idle sets the `ready` just put it in)
        sock.unlisting = asyncio.get_running_loop().create_future()
        call = functions.poll_end(self.keys, sock.runner, sock.conn, release=True)
        try:
            reply = await functions.run(self.redis, call)
        except redis.RedisError as exc:
            log.warning("linger end of %s failed: %s", sock.runner, exc)
            await sock.close(CLOSE_INTERNAL, "storage unavailable; reconnect")
            return
        finally:
            sock.unlisting.set_result(None)
            sock.unlisting = None
        if reply["result"] == "stale":
            await self.observe(sock.runner)

    async def unlinger(self, sock: RunnerSocket) -> None:
        """A lingering runner sent something other than `ready`: end the linger first."""
        if sock.session.state is State.LINGERING:
            sock.cancel_poll_timer()
            await self.end_linger(sock, sock.session.poll)

    def _arm_poll_try(self, sock: RunnerSocket, poll: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        delay = min(self.settings.poll_interval, max(0.0, deadline - loop.time()))
        sock.poll_timer = loop.call_later(
            delay, lambda: self.spawn(self._poll_try(sock, poll, deadline))
        )

    async def _poll_try(self, sock: RunnerSocket, poll: int, deadline: float) -> None:
        """The polling baseline: ask Redis for a job once per poll interval."""
        if sock.closed or sock.session.state is not State.POLLING or sock.session.poll != poll:
            return
        if asyncio.get_running_loop().time() >= deadline:
            sock.session.fire(Event.NO_JOB)
            await sock.send(messages.NoJob())
            return
        call = functions.ready(self.keys, sock.runner, sock.conn, "", mode="try")
        try:
            reply = await functions.run(self.redis, call)
        except redis.RedisError as exc:  # the poll stays open: try again next interval
            log.warning("poll try of %s failed: %s", sock.runner, exc)
            if sock.session.state is State.POLLING and sock.session.poll == poll:
                self._arm_poll_try(sock, poll, deadline)
            return
        if sock.session.state is not State.POLLING or sock.session.poll != poll:
            return
        if reply["result"] == "job":
            await self.deliver(sock, Offer.from_reply(reply))
        elif reply["result"] == "none":
            self._arm_poll_try(sock, poll, deadline)
        else:
            await self.observe(sock.runner)

    async def end_poll(self, sock: RunnerSocket, poll: int) -> None:
        """The long poll expired: send a job assigned a moment earlier, or `no_job`."""
        if sock.closed or sock.session.state is not State.POLLING or sock.session.poll != poll:
            return
        try:
            reply = await functions.run(
                self.redis, functions.poll_end(self.keys, sock.runner, sock.conn)
            )
        except redis.RedisError as exc:  # the poll must end somehow: the runner reconnects
            log.warning("poll end of %s failed: %s", sock.runner, exc)
            await sock.close(CLOSE_INTERNAL, "storage unavailable; reconnect")
            return
        if sock.session.state is not State.POLLING or sock.session.poll != poll:
            return  # a doorbell delivered the job meanwhile
        if reply["result"] == "job":
            await self.deliver(sock, Offer.from_reply(reply))
        elif reply["result"] == "none":
            sock.session.fire(Event.NO_JOB)
            await sock.send(messages.NoJob())
        else:
            await self.observe(sock.runner)
