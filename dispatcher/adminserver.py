"""The pod's admin listener: ``/metrics`` (Prometheus text format) on its own port.

Never on the runner-facing port: that one faces the runners' network (and the guard's limits), this
one faces the monitoring network. It runs in the pod's event loop, started and stopped by the app's
lifespan when ``DISPATCHER_ADMIN_PORT`` is set, so it answers while the pod drains with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

METRICS_PATH = "/metrics"


def metrics_app(registry: CollectorRegistry) -> Starlette:
    """An app serving ``registry`` on ``/metrics`` (and ``/healthz`` for the admin port's probe)."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    return Starlette(routes=[Route(METRICS_PATH, metrics), Route("/healthz", healthz)])


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the process's main server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AdminListener:
    """A small uvicorn server in the running loop, on a socket bound before it starts."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], port: int) -> None:
        self.server, self.task, self.port = server, task, port

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 5)


async def start_listener(registry: CollectorRegistry, host: str, port: int) -> AdminListener:
    """Serve ``registry`` on ``host:port`` (port 0: any free port; ``.port`` says which)."""
    return await start_app(metrics_app(registry), host, port)


async def start_app(app: Starlette, host: str, port: int) -> AdminListener:
    """Serve ``app`` in the running loop on ``host:port`` (0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = int(sock.getsockname()[1])
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="admin")
    while not server.started and not task.done():
        await asyncio.sleep(0.005)
    if task.done():
        task.result()  # raises what stopped it
    return AdminListener(server, task, bound)
