"""The Starlette application of one dispatcher pod, built by a factory with a lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from dispatcher import adminserver
from dispatcher.pod import Pod
from dispatcher.pod.channel import channel
from dispatcher.ratelimit import FailureLimiter
from dispatcher.settings import Settings


async def healthz(request: Request) -> Response:
    """200 while the process lives."""
    return PlainTextResponse("ok\n")


async def readyz(request: Request) -> Response:
    """200 only while Redis answers and the doorbell subscription is live; 503 from the moment
    the pod starts draining (first SIGTERM), so a load balancer sends it no new runner."""
    pod: Pod = request.app.state.pod
    if pod.stopping:
        return JSONResponse({"ready": False, "pod": pod.id, "draining": True}, status_code=503)
    if await pod.ready():
        return JSONResponse({"ready": True, "pod": pod.id})
    return JSONResponse({"ready": False, "pod": pod.id}, status_code=503)


def create_app(settings: Settings, pod: Pod | None = None) -> Starlette:
    """A pod's ASGI app; the lifespan starts and stops the pod's Redis side."""
    the_pod = pod or Pod(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await the_pod.start()
        admin = None
        if settings.admin_port:  # /metrics on its own port (dispatcher.adminserver)
            registry = the_pod.metrics.registry
            admin = await adminserver.start_listener(
                registry, settings.admin_host, settings.admin_port
            )
        app.state.admin = admin
        try:
            yield
        finally:
            if admin is not None:
                await admin.stop()
            await the_pod.stop()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            WebSocketRoute("/v1/runners/{runner}/channel", channel),
        ],
        lifespan=lifespan,
    )
    app.state.pod = the_pod
    # the handshake's per-pod state (dispatcher.pod.channel.refusal, docs/security.md)
    app.state.auth_failures = FailureLimiter(settings.auth_fail_rate)
    app.state.trusted_proxies = settings.trusted_proxy_networks
    return app
