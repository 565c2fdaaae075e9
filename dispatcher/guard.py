"""The pod's front door: every connection's request head is bounded and timed before uvicorn's
HTTP parser sees it, and every refusal is an HTTP response the client actually receives.

uvicorn hands each new connection to an HTTP protocol (httptools) that buffers the request head
without a bound and keeps an incomplete head open forever; a WebSocket upgrade is then handed to
the WebSocket protocol (``dispatcher.server.ChannelProtocol``). ``GuardedHttpProtocol`` sits in
that first place:

- every byte of a request head goes through a ``HeadScanner`` (``dispatcher.headlimits``) before
  the parser: a head over a limit is answered 414/431 and the rest of it is never buffered;
- a connection holds a ``Ticket`` from its first byte of a head until the head is complete, or,
  for a WebSocket, until the handshake is answered (the ticket moves to the WebSocket protocol).
  Tickets are counted (``DISPATCHER_MAX_PENDING_HANDSHAKES``; over it, 503) and each carries the
  ``DISPATCHER_HANDSHAKE_TIMEOUT`` deadline (an incomplete head is answered 408);
- a refusal is written, the write side shut (FIN after the response), and what the client still
  sends is read and dropped for a short while before the socket closes: closing a socket with
  unread input makes the kernel send a reset, which can destroy the response before the client
  reads it;
- refusals are logged at INFO through a ``RefusalDigest``: a flood costs one line per interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dispatcher.headlimits import Exceeded, HeadLimits, HeadScanner, Incomplete
from dispatcher.ratelimit import RefusalDigest

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0  # how long a refused connection's input is drained before the close
LINGER_BYTES = 256 * 1024  # past this much, reading stops (the close still waits for the timer)


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


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol behind the head limits, the deadline and the pending cap.

    ``gate`` is set on a per-server subclass (``guarded``)."""

    gate: ClassVar[HandshakeGate]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scanner = HeadScanner(self.gate.limits)
        self._ticket: Ticket | None = None
        self._lingering = False
        self._drained = 0
        self._linger_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._take_ticket()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._drain(data)
            return
        if self._ticket is None and not self._take_ticket():  # a next request's first byte
            return
        exceeded = self._scan(data)
        if exceeded is not None:
            self._refuse(exceeded.status, exceeded.reason)
            return
        super().data_received(data)
        if self.transport.get_protocol() is not self:  # upgraded; the ticket went along
            return
        if self._ticket is not None and not self._scanner.started:  # every head so far complete
            self._ticket.release()
            self._ticket = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    # -- uvicorn hooks ------------------------------------------------------------------------

    def handle_websocket_upgrade(self) -> None:
        ticket, self._ticket = self._ticket, None
        super().handle_websocket_upgrade()
        upgraded = self.transport.get_protocol()
        adopt = getattr(upgraded, "adopt_ticket", None)
        if ticket is None:
            return
        if upgraded is self or adopt is None:
            ticket.release()
        else:
            adopt(ticket)

    def send_400_response(self, msg: str) -> None:
        # uvicorn has logged it at WARNING already (dispatcher.logredact drops that line)
        self._refuse(400, "invalid HTTP request")

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn warns once per request; a stranger could fill the log with it
        self.gate.refused(self.loop, self.client, 400, "unsupported upgrade (served as plain HTTP)")

    # -- the guard ----------------------------------------------------------------------------

    def _take_ticket(self) -> bool:
        ticket = self.gate.admit(self.loop)
        if ticket is None:
            self._refuse(503, "too many pending handshakes", [("Retry-After", "1")])
            return False
        ticket.on_expire = self._expired
        self._ticket = ticket
        return True

    def _scan(self, data: bytes) -> Exceeded | None:
        """Account every head in ``data``; the scanner is left on the unfinished one, if any."""
        while data:
            verdict = self._scanner.feed(data)
            if isinstance(verdict, Exceeded):
                return verdict
            if isinstance(verdict, Incomplete):
                return None
            data = data[verdict.end :]
            self._scanner = HeadScanner(self.gate.limits)
        return None

    def _expired(self) -> None:
        self._ticket = None
        if not self.transport.is_closing():
            self._refuse(408, "request head not received in time")

    def _refuse(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer ``status``, shut the write side, drain the input a while, then close."""
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None
        self.gate.refused(self.loop, self.client, status, reason)
        self._lingering = True
        self.pipeline.clear()
        if self.cycle is not None and not self.cycle.response_complete:
            # a request still being answered must not write after the refusal (and its FIN)
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(http_response(status, reason, headers))
        if transport.can_write_eof():
            transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, transport.close)
        # the parser may have paused reading (a pipelined request); the drain must read
        self.flow.resume_reading()

    def _drain(self, data: bytes) -> None:
        self._drained += len(data)
        if self._drained > LINGER_BYTES:
            self.transport.pause_reading()


def guarded(gate: HandshakeGate) -> type[GuardedHttpProtocol]:
    """The HTTP protocol class for one server (uvicorn instantiates it per connection)."""

    class GuardedHttp(GuardedHttpProtocol):
        pass

    GuardedHttp.gate = gate
    return GuardedHttp
