"""Serve one pod with uvicorn: `dispatcher serve`.

On the first SIGTERM/SIGINT the pod closes every channel itself with 1001 ("going away; reconnect
to any pod") before uvicorn shuts down, because uvicorn would close them with 1012. A second
signal falls through to uvicorn's own handling (immediate exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from dispatcher import logredact
from dispatcher.app import create_app
from dispatcher.guard import HandshakeGate, Ticket, guarded
from dispatcher.headlimits import HeadLimits
from dispatcher.pod import Pod
from dispatcher.settings import Settings

log = logging.getLogger(__name__)


class ChannelProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, with these differences:

    - a text frame that is not UTF-8 is closed 1007 *with a reason*: PROTOCOL.md says every close
      carries one, and uvicorn's own handling of that case sends none (and never reaches the
      application);
    - a refusal sent by the application (``send_denial_response``: 401, 429, 503) completes the
      handshake. uvicorn leaves ``handshake_complete`` false after such a response, so when the
      application returns it logs "ASGI callable returned without completing handshake" at ERROR
      for every refused runner (and tries to send a 500 it then skips);
    - a request head that the websockets parser itself refuses (its own line and header limits)
      gets the 414/431 response that parser prepared: uvicorn never wrote it nor closed the socket.
      The guard in front (``dispatcher.guard``) has tighter limits, so this is a second line;
    - the handshake's ``Ticket`` (pending count and deadline, ``dispatcher.guard``) comes over
      from the HTTP protocol and is given back once the handshake is answered either way.
    """

    _ticket: Ticket | None = None

    def adopt_ticket(self, ticket: Ticket) -> None:
        """Hold the handshake's ticket until the handshake is answered (or the deadline)."""
        if self.handshake_complete or self.transport.is_closing():
            ticket.release()
            return
        self._ticket = ticket
        ticket.on_expire = self._handshake_expired

    def _handshake_expired(self) -> None:
        self._ticket = None
        if not self.handshake_complete and not self.transport.is_closing():
            log.info("handshake from %s not answered in time; closing", self.client)
            self.transport.close()

    def _release_ticket(self) -> None:
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if (
            not self.handshake_initiated
            and self.conn.handshake_exc is not None
            and not self.transport.is_closing()
        ):
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.handshake_complete = True
            self.close_sent = True
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release_ticket()
        super().connection_lost(exc)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True  # the refusal is the handshake's answer
        if self.handshake_complete:
            self._release_ticket()

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                self.conn.send_close(1007, "text frame is not valid UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()


class PodServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains the pod's channels with 1001."""

    def __init__(self, config: uvicorn.Config, pod: Pod, *, signals: bool = True) -> None:
        super().__init__(config)
        self.pod = pod
        self._signals = signals
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.gate: HandshakeGate | None = None  # set by build_server

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def capture_signals(self) -> Any:
        if self._signals:
            return super().capture_signals()
        return contextlib.nullcontext()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._loop.call_soon_threadsafe(lambda: self.pod.spawn(self.drain()))

    async def drain(self) -> None:
        """Close every channel with 1001, then let uvicorn finish."""
        self._draining = True
        log.info("pod %s: closing channels with 1001 and shutting down", self.pod.id)
        await self.pod.close_sockets()
        self.should_exit = True


def build_server(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    signals: bool = True,
    **uvicorn_options: Any,
) -> PodServer:
    """A ready-to-run server for one pod (tests run it in-process on a pre-bound socket)."""
    pod = Pod(settings)
    gate = HandshakeGate(
        HeadLimits(settings.max_head_line, settings.max_head_bytes, settings.max_headers),
        settings.handshake_timeout,
        settings.max_pending_handshakes,
    )
    config = uvicorn.Config(
        create_app(settings, pod),
        host=host,
        port=port,
        http=guarded(gate),
        ws=ChannelProtocol,
        # X-Forwarded-For is read by the handshake itself, only from DISPATCHER_TRUSTED_PROXIES
        proxy_headers=False,
        ws_max_size=settings.max_message_bytes,
        # permessage-deflate costs ~38 KiB per idle connection (bench/results/SUMMARY.md)
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_interval=settings.ping_interval,
        ws_ping_timeout=settings.ping_timeout,
        lifespan="on",
        timeout_graceful_shutdown=5,
        **uvicorn_options,
    )
    logredact.install()  # after Config: its logging setup must not come after the filter
    server = PodServer(config, pod, signals=signals)
    server.gate = gate
    pod.metrics.gate = gate  # its refusal count is exported on the admin port
    return server


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve one pod until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = build_server(settings, host, port)
    log.info("pod %s serving namespace %r on %s:%s", server.pod.id, settings.namespace, host, port)
    server.run()
