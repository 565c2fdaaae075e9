"""`dispatcher dashboard`: a read-only live page of a namespace, from Redis state only.

``/`` is a plain HTML page (``static/dashboard.html``, no build step) that fetches ``/api/state``
every second and redraws; ``/api/job/{id}`` is a job's full record (the page links to it). Nothing
here writes to Redis. With ``DISPATCHER_DASHBOARD_TOKEN`` set every route asks for it, as
``Authorization: Bearer <token>`` or ``?token=<token>`` (the page passes its own on).
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from importlib import resources

import redis
import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dispatcher import dashview, redisconn
from dispatcher.exporter import SnapshotCache
from dispatcher.keys import Keys
from dispatcher.records import job_record
from dispatcher.settings import Settings

CACHE_SECONDS = 0.5  # the page asks every second; several open pages share one read


def page() -> str:
    return resources.files("dispatcher").joinpath("static/dashboard.html").read_text("utf-8")


def dashboard_app(settings: Settings, ttl: float = CACHE_SECONDS) -> Starlette:
    client = redisconn.async_client(settings.redis_url, 16, 5.0, socket_timeout=5)
    keys = Keys(settings.namespace)
    cache = SnapshotCache(client, keys, dashview.dashboard_plan, ttl)
    token = settings.dashboard_token
    html = page()

    def allowed(request: Request) -> bool:
        if not token:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = request.query_params.get("token", "")
        return hmac.compare_digest(given.strip().encode(), token.encode())

    async def index(request: Request) -> Response:
        if not allowed(request):
            return PlainTextResponse("dashboard token required\n", status_code=401)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def state(request: Request) -> Response:
        if not allowed(request):
            return JSONResponse({"error": "dashboard token required"}, status_code=401)
        try:
            return JSONResponse(await cache.get(), headers={"Cache-Control": "no-store"})
        except redis.RedisError as exc:
            return JSONResponse({"error": f"cannot read Redis: {exc}"}, status_code=503)

    async def job(request: Request) -> Response:
        if not allowed(request):
            return JSONResponse({"error": "dashboard token required"}, status_code=401)
        job_id = request.path_params["job_id"]
        raw = await client.hgetall(keys.job(job_id))
        if not raw:
            return JSONResponse({"error": f"no job {job_id}"}, status_code=404)
        return JSONResponse(job_record(raw))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/api/job/{job_id}", job),
            Route("/healthz", lambda request: PlainTextResponse("ok\n")),
        ],
        lifespan=lifespan,
    )
    app.state.cache = cache
    return app
