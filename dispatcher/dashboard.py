"""`dispatcher dashboard`: a read-only live page of a namespace, from Redis state only.

``/`` is a plain HTML page (``static/dashboard.html``, no build step) fed by ``/api/events``, a
Server-Sent Events stream: a ``state`` event at once, again as soon as ``XREAD BLOCK`` on
``{ns}:events`` returns something (a job or runner changed), and every ``PUSH_SECONDS`` anyway (ages
move). The page falls back to fetching ``/api/state`` every second only when the stream fails.
``/api/job/{id}`` is a job's full record (the page links to it). Nothing
here writes to Redis. With ``DISPATCHER_DASHBOARD_TOKEN`` set every route asks for it, as
``Authorization: Bearer <token>`` or ``?token=<token>`` (the page passes its own on).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import redis
import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from dispatcher import dashview, redisconn
from dispatcher.exporter import SnapshotCache
from dispatcher.keys import Keys
from dispatcher.records import job_record, text
from dispatcher.settings import Settings

CACHE_SECONDS = 0.5  # the page asks every second; several open pages share one read
PUSH_SECONDS = 2.0  # a state event at least this often on the stream, even with no event
BLOCK_MS = 1000  # XREAD BLOCK per wait (well under the client's 5 s socket timeout)
MIN_GAP = 0.1  # s between two pushes on one stream: a burst of events is one redraw


def sse(event: str, data: object) -> bytes:
    """One Server-Sent Events message (``data`` as one JSON line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


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

    async def stream() -> AsyncIterator[bytes]:
        """State now, then on every change in ``{ns}:events`` and every ``PUSH_SECONDS``."""
        last = "$"
        pushed = 0.0
        try:
            newest = await client.xrevrange(keys.events, "+", "-", count=1)
            if newest:
                last = str(text(newest[0][0]))
            yield sse("state", await cache.get(newer_than=time.monotonic()))
            pushed = time.monotonic()
        except redis.RedisError as exc:
            yield sse("failure", {"error": f"cannot read Redis: {exc}"})
        while True:
            try:
                entries: Any = await client.xread({keys.events: last}, count=1000, block=BLOCK_MS)
                seen = time.monotonic()
                for _stream, rows in entries or []:
                    if rows:
                        last = str(text(rows[-1][0]))
                if entries or seen - pushed >= PUSH_SECONDS:
                    if seen - pushed < MIN_GAP:
                        await asyncio.sleep(MIN_GAP - (seen - pushed))
                    yield sse("state", await cache.get(newer_than=seen))
                    pushed = time.monotonic()
            except redis.RedisError as exc:
                yield sse("failure", {"error": f"cannot read Redis: {exc}"})
                await asyncio.sleep(1)

    async def events(request: Request) -> Response:
        if not allowed(request):
            return JSONResponse({"error": "dashboard token required"}, status_code=401)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

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
            Route("/api/events", events),
            Route("/api/job/{job_id}", job),
            Route("/healthz", lambda request: PlainTextResponse("ok\n")),
        ],
        lifespan=lifespan,
    )
    app.state.cache = cache
    return app
