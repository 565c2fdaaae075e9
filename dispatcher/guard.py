"""The handshake gate: how many request heads may be pending at once, and for how long.

Every connection of the pod's front door (``dispatcher.frontdoor``) holds a ``Ticket`` from the
first byte of a request head until the head is complete, or, for a WebSocket, until the handshake
is answered (the ticket moves to the WebSocket protocol, ``dispatcher.wsprotocol``). Tickets are
counted per server (``DISPATCHER_MAX_PENDING_HANDSHAKES``; past it a new connection is answered
503) and each carries the ``DISPATCHER_HANDSHAKE_TIMEOUT`` deadline (its holder answers 408 or
closes). Refusals are logged at INFO through a ``RefusalDigest``: a flood costs one line per
interval. ``http_response`` is the complete closing response every refusal sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

from dispatcher.headlimits import HeadLimits
from dispatcher.ratelimit import RefusalDigest

log = logging.getLogger(__name__)


class Ticket:
    """One connection's place among the pending handshakes, with its deadline."""

    def __init__(self, gate: HandshakeGate) -> None:
        self._gate: HandshakeGate | None = gate
        self._timer: asyncio.TimerHandle | None = None
        self.on_expire: Callable[[], None] = lambda: None

    def arm(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self._timer = loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.release()
        self.on_expire()

    @property
    def held(self) -> bool:
        return self._gate is not None

    def release(self) -> None:
        """Leave the pending handshakes; idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._gate is not None:
            self._gate.pending -= 1
            self._gate = None


class HandshakeGate:
    """Per server: the head limits, the deadline, the count of pending handshakes, the log."""

    def __init__(
        self,
        limits: HeadLimits,
        timeout: float,
        max_pending: int,
        *,
        digest_interval: float = 10.0,
    ) -> None:
        self.limits = limits
        self.timeout = timeout
        self.max_pending = max_pending
        self.pending = 0
        self.refusals = 0  # every refusal this gate made, for tests and the bench
        self.digest = RefusalDigest(digest_interval)
        self._summary_timer: asyncio.TimerHandle | None = None

    def admit(self, loop: asyncio.AbstractEventLoop) -> Ticket | None:
        """A ticket for a handshake that begins now, or None when too many are pending."""
        if self.pending >= self.max_pending:
            return None
        self.pending += 1
        ticket = Ticket(self)
        ticket.arm(loop, self.timeout)
        return ticket

    def refused(
        self, loop: asyncio.AbstractEventLoop, client: Any, status: int, reason: str
    ) -> None:
        """Log a refusal at INFO, or count it into the next summary line."""
        self.refusals += 1
        if self.digest.note(f"{status} {reason}", loop.time()):
            log.info("handshake from %s refused: %d %s", peer_text(client), status, reason)
        elif self._summary_timer is None:
            self._summary_timer = loop.call_later(self.digest.interval, self._summarize, loop)

    def _summarize(self, loop: asyncio.AbstractEventLoop) -> None:
        self._summary_timer = None
        line = self.digest.summary(loop.time())
        if line is not None:
            log.info("%s in the last %.0f s", line, self.digest.interval)


def peer_text(client: Any) -> str:
    if isinstance(client, tuple) and len(client) >= 2:
        return f"{client[0]}:{client[1]}"
    return "unknown"


def http_response(status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A complete HTTP/1.1 response with a short text body, closing the connection."""
    body = (reason + "\n").encode()
    phrase = "URI Too Long" if status == 414 else HTTPStatus(status).phrase  # RFC 9110's name
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
