"""The pod's doorbell: one pub/sub connection subscribed to the pod's own channel (sharded:
SSUBSCRIBE, on a cluster to the node serving the namespace's slot).

Every message names a runner whose Redis state changed; a match's message also carries the offer
(``parse_bell``), so the pod can send the `job` without asking Redis first. The reader never
blocks: it hands the parsed bell to a callback that schedules work. Each time the subscription is
(re)confirmed — at start and after redis-py reconnects a dropped connection on its own —
``on_subscribed`` runs a reconcile, because messages published while the connection was down are
gone (pub/sub is at-most-once).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from dispatcher import redisconn
from dispatcher.settings import Settings

log = logging.getLogger(__name__)

RETRY_MIN = 0.1
RETRY_MAX = 30.0
# The liveness probe: a message the pod publishes on its own bell channel. A runner name can never
# be this ('!' is not allowed in names), so it is never taken for a doorbell.
PROBE = "!probe"
_PROBE = PROBE.encode()


_RUNNER_NAME = re.compile(r"[A-Za-z0-9._@+\-]{1,128}")  # NAME_PATTERN of dispatch.lua


@dataclass(frozen=True, slots=True)
class Offer:
    """What a pod needs to send a `job` frame: a claimed job's current attempt (``payload`` is
    the submitted JSON text, kept raw)."""

    job: str
    attempt: int
    spec: str
    payload: bytes
    timeout: float
    created: int | None  # ms on the Redis clock

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> Offer:
        """The offer of a function's JSON reply (``ready``, ``poll_end``, ``observe``)."""
        created = reply.get("created")
        return cls(
            job=str(reply["job"]),
            attempt=int(reply["attempt"]),
            spec=str(reply["spec"]),
            payload=str(reply["payload"]).encode(),
            timeout=float(reply["timeout"]),
            created=None if created is None else int(created),
        )


@dataclass(frozen=True, slots=True)
class Bell:
    """One doorbell message: look at ``runner``. A match's bell also names the connection
    generation the runner was idle on and the job and attempt assigned, and carries the offer
    when its payload was small enough to ride along (else ``offer`` is None)."""

    runner: str
    conn: int = 0  # 0: not a match's bell
    job: str = ""
    attempt: int = 0
    offer: Offer | None = None


def parse_bell(data: bytes) -> Bell | None:
    """Parse a bell (format in ``dispatch.lua``, ``notify_offer``): a runner name alone, or
    ``'<runner> <conn> <job> <attempt> <spec> <timeout> <created>'`` and, after a newline, the
    payload. None when the message names no runner; a match's bell whose head does not parse is
    taken as a bell for its first word (the pod then reads the rest from Redis)."""
    head, newline, payload = data.partition(b"\n")
    try:
        fields = head.decode().split(" ")
    except UnicodeDecodeError:
        return None
    if not _RUNNER_NAME.fullmatch(fields[0]):
        return None
    if len(fields) == 1 and not newline:
        return Bell(fields[0])
    try:
        runner, conn, job, attempt, spec, timeout, created = fields
        offer = Offer(job, int(attempt), spec, payload, float(timeout), int(float(created)))
        generation = int(conn)
    except ValueError:
        return Bell(fields[0])
    return Bell(runner, generation, job, offer.attempt, offer if payload else None)


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
            async for message in pubsub.listen():
                if self._stopped():
                    return
                await self._handle(message)
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
