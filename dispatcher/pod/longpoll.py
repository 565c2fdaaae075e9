"""The long poll of one runner connection: holding it open, ending it, lingering after it.

Pub/sub mode: the poll waits for a doorbell until its timeout, then `no_job`; the runner then
lingers in Redis's idle sets for ``DISPATCHER_LINGER`` s so that its next `ready` needs no Redis
call (see ``pod.session``). Poll mode (``DISPATCHER_WAKE=poll``, the baseline this project
replaces): the pod asks Redis for a job once per poll interval instead.

``LongPolls`` belongs to one ``Pod`` (composition: it is given the pod and uses its Redis client,
keys, settings, ``deliver``, ``observe`` and ``spawn``). The decisions are the session's; this
module owns the timers and the Redis calls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import redis.asyncio

from dispatch_protocol import closecodes, messages
from dispatcher import functions
from dispatcher.pod.bells import Offer
from dispatcher.pod.session import Event
from dispatcher.pod.sockets import RunnerSocket

if TYPE_CHECKING:
    from dispatcher.pod.pod import Pod

log = logging.getLogger(__name__)


class LongPolls:
    """The long polls of one pod's connections."""

    def __init__(self, pod: Pod) -> None:
        self._pod = pod

    def arm(self, sock: RunnerSocket, seconds: float) -> None:
        """Hold the poll open: until the deadline (pub/sub) or retrying each poll interval."""
        poll = sock.session.poll
        loop = asyncio.get_running_loop()
        if self._pod.settings.wake == "poll":
            self._arm_try(sock, poll, loop.time() + seconds)
            return
        sock.poll_timer = loop.call_later(seconds, lambda: self._pod.spawn(self.expire(sock, poll)))

    async def expire(self, sock: RunnerSocket, poll: int) -> None:
        """The long poll expired: `no_job`, and linger in the idle sets (no Redis call)."""
        if not sock.session.polling(poll):
            return
        if self._pod.settings.linger <= 0:  # no lingering: leave the idle sets with the `no_job`
            await self.end(sock, poll)
            return
        sock.session.linger()
        loop = asyncio.get_running_loop()
        sock.poll_timer = loop.call_later(
            self._pod.settings.linger, lambda: self._pod.spawn(self.end_linger(sock, poll))
        )
        await sock.send(messages.NoJob())

    async def end_linger(self, sock: RunnerSocket, poll: int) -> None:
        """No `ready` came after `no_job`: leave the idle sets, handing back a held job."""
        if not sock.session.lingering(poll):
            return
        sock.session.end_linger()
        # a `ready` arriving meanwhile must reach Redis after this call, not before it (this call
        # would take the runner out of the idle sets the `ready` just put it in)
        sock.unlisting = asyncio.get_running_loop().create_future()
        pod = self._pod
        call = functions.poll_end(pod.keys, sock.runner, sock.conn, release=True)
        try:
            reply = await functions.run(pod.calls, call)
        except redis.RedisError as exc:
            log.warning("linger end of %s failed: %s", sock.runner, exc)
            await sock.close(closecodes.INTERNAL, "storage unavailable; reconnect")
            return
        finally:
            sock.unlisting.set_result(None)
            sock.unlisting = None
        if reply["result"] == "released":
            sock.session.released(str(reply["job"]), int(reply["attempt"]))
        if reply["result"] == "stale":
            await pod.observe(sock.runner)

    async def unlinger(self, sock: RunnerSocket) -> None:
        """A lingering runner sent something other than `ready`: end the linger first."""
        if sock.session.lingering(sock.session.poll):
            sock.cancel_poll_timer()
            await self.end_linger(sock, sock.session.poll)

    def _arm_try(self, sock: RunnerSocket, poll: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        delay = min(self._pod.settings.poll_interval, max(0.0, deadline - loop.time()))
        sock.poll_timer = loop.call_later(
            delay, lambda: self._pod.spawn(self._try(sock, poll, deadline))
        )

    async def _try(self, sock: RunnerSocket, poll: int, deadline: float) -> None:
        """The polling baseline: ask Redis for a job once per poll interval."""
        if not sock.session.polling(poll):
            return
        if asyncio.get_running_loop().time() >= deadline:
            sock.session.fire(Event.NO_JOB)
            await sock.send(messages.NoJob())
            return
        pod = self._pod
        call = functions.ready(pod.keys, sock.runner, sock.conn, "", mode="try")
        try:
            reply = await functions.run(pod.calls, call)
        except redis.RedisError as exc:  # the poll stays open: try again next interval
            log.warning("poll try of %s failed: %s", sock.runner, exc)
            if sock.session.polling(poll):
                self._arm_try(sock, poll, deadline)
            return
        if not sock.session.polling(poll):
            return
        if reply["result"] == "job":
            await pod.deliver(sock, Offer.from_reply(reply))
        elif reply["result"] == "none":
            self._arm_try(sock, poll, deadline)
        else:
            await pod.observe(sock.runner)

    async def end(self, sock: RunnerSocket, poll: int) -> None:
        """The long poll expired: send a job assigned a moment earlier, or `no_job`."""
        if not sock.session.polling(poll):
            return
        pod = self._pod
        try:
            reply = await functions.run(
                pod.calls, functions.poll_end(pod.keys, sock.runner, sock.conn)
            )
        except redis.RedisError as exc:  # the poll must end somehow: the runner reconnects
            log.warning("poll end of %s failed: %s", sock.runner, exc)
            await sock.close(closecodes.INTERNAL, "storage unavailable; reconnect")
            return
        if not sock.session.polling(poll):
            return  # a doorbell delivered the job meanwhile
        if reply["result"] == "job":
            await pod.deliver(sock, Offer.from_reply(reply))
        elif reply["result"] == "none":
            sock.session.fire(Event.NO_JOB)
            await sock.send(messages.NoJob())
        else:
            await pod.observe(sock.runner)
