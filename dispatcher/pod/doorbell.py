"""The pod's doorbell: one pub/sub connection subscribed to the pod's own channel (sharded:
SSUBSCRIBE, on a cluster to the node serving the namespace's slot).

Every message names a runner whose Redis state changed; a match's message also carries the offer
(``parse_bell``), so the pod can send the `job` without asking Redis first. The reader never
blocks: it hands the parsed bell to a callback that schedules work. Each time the subscription is
(re)confirmed — at start and after a dropped connection is subscribed afresh (``run``) —
``on_subscribed`` runs a reconcile, because messages published while the connection was down are
gone (pub/sub is at-most-once).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
import redis
import redis.asyncio

from dispatcher import redisconn
from dispatcher.pod.bells import Bell, parse_bell
from dispatcher.settings import Settings

log = logging.getLogger(__name__)

READ_CHUNK = 65536
RETRY_MIN = 0.1
RETRY_MAX = 30.0
# The liveness probe: a message the pod publishes on its own bell channel. A runner name can never
# be this ('!' is not allowed in names), so it is never taken for a doorbell.
PROBE = "!probe"
_PROBE = PROBE.encode()


def _message(reply: Any) -> dict[str, object]:
    """A subscription's reply as the message dict redis-py's PubSub would give: ``type``
    (text), ``channel`` and ``data`` (bytes, or the subscription count); an error reply raised."""
    if isinstance(reply, hiredis.ReplyError):
        raise redis.ResponseError(str(reply))
    if not isinstance(reply, list) or len(reply) < 3:
        return {"type": None, "channel": None, "data": reply}
    kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    return {"type": kind, "channel": reply[1], "data": reply[2]}


class Doorbell:
    """Subscribe to ``channel`` and call ``on_bell(bell)`` for every message but the probe."""

    def __init__(
        self,
        settings: Settings,
        channel: str,
        on_bell: Callable[[Bell], None],
        on_subscribed: Callable[[], Awaitable[None]],
        stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        self._settings = settings
        self._channel = channel
        self._on_bell = on_bell
        self._on_subscribed = on_subscribed
        self._stopped = stopped
        self._delay = RETRY_MIN  # back-off of the next reconnect; reset by every confirmation
        self.live = False
        self._probe_sent: float | None = None  # loop time of the last probe published
        self._probe_seen = 0.0  # loop time the last probe came back

    async def run(self) -> None:
        """Listen until cancelled, rebuilding the connection with jittered back-off."""
        while not self._stopped():
            try:
                await self._listen()
            except asyncio.CancelledError:
                self.live = False
                raise
            except (redis.RedisError, OSError) as exc:
                self.live = False
                log.warning("doorbell connection lost (%s); retrying in %.1fs", exc, self._delay)
                await self._back_off()
            except Exception:  # anything else: the doorbell must come back, not end for good
                self.live = False
                log.exception("doorbell failed; retrying in %.1fs", self._delay)
                await self._back_off()

    async def _back_off(self) -> None:
        await asyncio.sleep(self._delay * random.uniform(0.8, 1.2))
        self._delay = min(self._delay * 2, RETRY_MAX)

    def probe_published(self, now: float) -> None:
        """The pod published a probe at loop time ``now``."""
        self._probe_sent = now

    def probe_overdue(self, now: float, timeout: float) -> bool:
        """A probe went out ``timeout`` ago or more and has not come back: the subscription is
        dead without an error (a half-open connection, a proxy that dropped it)."""
        sent = self._probe_sent
        return sent is not None and self._probe_seen < sent and now - sent >= timeout

    @property
    def probe_seen(self) -> float:
        """Loop time the last probe came back (0.0: none yet)."""
        return self._probe_seen

    def reset_probe(self) -> None:
        self._probe_sent, self._probe_seen = None, 0.0

    async def _listen(self) -> None:
        client = await redisconn.async_pubsub_client(self._settings.redis_url, self._channel)
        pubsub = client.pubsub()
        try:
            await pubsub.ssubscribe(self._channel)
            # Read the subscription's replies off the connection redis-py opened and subscribed,
            # past its PubSub.listen: that costs a timeout context, a retry wrapper and a message
            # dict per bell (issue 11: ~10% of the pod's CPU in the throughput scenario), and
            # every bell is on the submit -> `job` path. A dropped connection ends this loop with
            # an error: ``run`` subscribes afresh (and reconciles on the confirmation).
            if pubsub.connection is None:  # ssubscribe opened it: never None here
                raise redis.ConnectionError("the doorbell has no connection")
            reader = pubsub.connection._reader
            if reader is None:
                raise redis.ConnectionError("the doorbell's connection is not open")
            parser = hiredis.Reader()
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    raise redis.ConnectionError(
                        "the doorbell's connection was closed by the server"
                    )
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    if self._stopped():
                        return
                    await self._handle(_message(reply))
        finally:
            self.live = False
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()

    async def _handle(self, message: dict[str, object]) -> None:
        kind = message.get("type")
        if kind in ("smessage", "message"):
            data = message["data"]
            raw = data if isinstance(data, bytes) else str(data).encode()
            if raw == _PROBE:
                self._probe_seen = asyncio.get_running_loop().time()
                return
            bell = parse_bell(raw)
            if bell is None:
                log.warning("doorbell: ignored a message that names no runner: %.80r", raw)
            else:
                self._on_bell(bell)
        elif kind == "sunsubscribe":
            # the server dropped the subscription (on a cluster: the slot moved to another node)
            raise redis.ConnectionError("the doorbell's channel was unsubscribed by the server")
        elif kind in ("ssubscribe", "subscribe"):
            self.live = True
            self._delay = RETRY_MIN
            try:
                await self._on_subscribed()
            except redis.RedisError as exc:  # the tick will catch up
                log.warning("reconcile after subscribe failed: %s", exc)
