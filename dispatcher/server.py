"""Serve one pod with uvicorn: `dispatcher serve`.

uvicorn binds the socket, runs the lifespan and the loop; every connection is served by our own
protocols, passed through uvicorn's public options: ``http=`` the front door
(``dispatcher.frontdoor``: head limits, handshake tickets, refusals, the probes over h11) and
``ws=`` the WebSocket protocol an upgrade is handed to (``dispatcher.wsprotocol``, on
websockets' sans-I/O core). No class of uvicorn's is subclassed but ``uvicorn.Server`` (its
documented programmatic entry point).

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

from dispatcher import logredact
from dispatcher.app import create_app
from dispatcher.frontdoor import front_door
from dispatcher.guard import HandshakeGate
from dispatcher.headlimits import HeadLimits
from dispatcher.pod import Pod
from dispatcher.settings import Settings
from dispatcher.wsprotocol import ChannelProtocol

log = logging.getLogger(__name__)


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
        http=front_door(gate),  # uvicorn's public option: a new connection's protocol class
        ws=ChannelProtocol,  # uvicorn's public option: the upgraded connection's protocol class
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
