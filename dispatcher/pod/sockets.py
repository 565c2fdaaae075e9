"""One accepted runner WebSocket on this pod: the I/O half of a connection (sending, closing, its
poll timer). What the connection is doing lives in its pure ``Session`` (``pod.session``)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketState

from dispatch_protocol import messages
from dispatcher.pod.session import Session

log = logging.getLogger(__name__)


def close_reason(reason: str) -> str:
    """At most 123 bytes of UTF-8 (RFC 6455), cut on a character boundary."""
    return reason.encode()[:123].decode("utf-8", "ignore")


@dataclass(eq=False)
class RunnerSocket:
    """A runner's live connection: ``conn`` is its generation in the runner record."""

    runner: str
    conn: int
    ws: WebSocket
    session: Session = field(default_factory=Session)
    poll_timer: asyncio.TimerHandle | None = None
    unlisting: asyncio.Future[None] | None = None  # set while the pod ends a linger in Redis

    @property
    def closed(self) -> bool:
        return self.session.closed

    async def send(self, message: messages.Message) -> None:
        """Send one frame; a socket already closing swallows it (the runner will re-attach)."""
        if self.session.closed:
            return
        try:
            await self.ws.send_text(messages.encode(message))
        except Exception as exc:  # disconnected meanwhile: the runner re-attaches or is reaped
            log.debug("send to %s failed: %s", self.runner, exc)

    def disconnected(self) -> None:
        """The runner closed the connection (or it dropped)."""
        self.session.close()

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and a short reason (at most 123 bytes, RFC 6455)."""
        if not self.session.close():
            return
        self.cancel_poll_timer()
        if self.ws.application_state is WebSocketState.CONNECTED:
            try:
                await self.ws.close(code=code, reason=close_reason(reason))
            except Exception as exc:  # a dying socket must not take the handler down with it
                log.debug("close of %s failed: %s", self.runner, exc)

    async def push_cancel(self, job: str, attempt: int, reason: str) -> None:
        """Send `cancel`; that attempt is no longer this connection's job in flight."""
        self.session.job_done(job, attempt)
        await self.send(messages.Cancel(job=job, attempt=attempt, reason=reason))  # type: ignore[arg-type]

    def cancel_poll_timer(self) -> None:
        if self.poll_timer is not None:
            self.poll_timer.cancel()
            self.poll_timer = None
