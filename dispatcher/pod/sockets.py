"""One accepted runner WebSocket on this pod: sending, closing, and its session state."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketState

from dispatch_protocol import messages
from dispatcher.doorbell import Offer
from dispatcher.session import Event, Session, State

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
    closed: bool = False
    rang: bool = False  # a doorbell came while `ready` was being answered
    # The job the runner record held when this connection opened: the runner may still be
    # executing it before it re-attaches with `running`, so a cancel must reach it meanwhile.
    prior: tuple[str, int] | None = None
    # While LINGERING: a job assigned meanwhile (the answer to the next `ready`), and whether the
    # runner is still in the idle sets (False once something took it out).
    held_offer: Offer | None = None
    listed: bool = True
    unlisting: asyncio.Future[None] | None = None  # set while the pod ends a linger in Redis

    async def send(self, message: messages.Message) -> None:
        """Send one frame; a socket already closing swallows it (the runner will re-attach)."""
        if self.closed:
            return
        try:
            await self.ws.send_text(messages.encode(message))
        except Exception as exc:  # disconnected meanwhile: the runner re-attaches or is reaped
            log.debug("send to %s failed: %s", self.runner, exc)

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and a short reason (at most 123 bytes, RFC 6455)."""
        if self.closed:
            return
        self.closed = True
        self.cancel_poll_timer()
        if self.ws.application_state is WebSocketState.CONNECTED:
            try:
                await self.ws.close(code=code, reason=close_reason(reason))
            except Exception as exc:  # a dying socket must not take the handler down with it
                log.debug("close of %s failed: %s", self.runner, exc)

    async def push_cancel(self, job: str, attempt: int, reason: str) -> None:
        """Send `cancel`; that attempt is no longer this connection's job in flight."""
        if self.session.holds(job, attempt):
            self.session.fire(Event.JOB_DONE)
        self.forget_prior(job)
        await self.send(messages.Cancel(job=job, attempt=attempt, reason=reason))  # type: ignore[arg-type]

    def forget_prior(self, job: str) -> None:
        if self.prior is not None and self.prior[0] == job:
            self.prior = None

    def watched_job(self) -> tuple[str, int] | None:
        """The job whose cancellation this connection must push: in flight, or held before."""
        if self.session.state is State.IN_FLIGHT:
            return self.session.job, self.session.attempt
        return self.prior

    def cancel_poll_timer(self) -> None:
        if self.poll_timer is not None:
            self.poll_timer.cancel()
            self.poll_timer = None
