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

from dispatcher.app import create_app
from dispatcher.pod import Pod
from dispatcher.settings import Settings

log = logging.getLogger(__name__)


class ChannelProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, except that a text frame that is not UTF-8 is
    closed 1007 *with a reason*: PROTOCOL.md says every close carries one, and uvicorn's own
    handling of that case sends none (and never reaches the application)."""

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
    config = uvicorn.Config(
        create_app(settings, pod),
        host=host,
        port=port,
        ws=ChannelProtocol,
        ws_max_size=settings.max_message_bytes,
        # permessage-deflate costs ~38 KiB per idle connection (bench/results/SUMMARY.md)
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_interval=settings.ping_interval,
        ws_ping_timeout=settings.ping_timeout,
        lifespan="on",
        timeout_graceful_shutdown=5,
        **uvicorn_options,
    )
    return PodServer(config, pod, signals=signals)


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve one pod until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = build_server(settings, host, port)
    log.info("pod %s serving namespace %r on %s:%s", server.pod.id, settings.namespace, host, port)
    server.run()
