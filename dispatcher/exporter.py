"""`dispatcher metrics-exporter`: the namespace-wide figures of ``dispatcher.fleetmetrics``, served
on ``/metrics`` by one process for the whole namespace (run one replica).

The I/O half: runs the read plan with one pipeline per round trip, caches the snapshot for
``CACHE_SECONDS`` (several Prometheus servers, or one scraping often, cost Redis one read per
second at most) and renders it. A scrape while Redis is down answers
``dispatcher_exporter_redis_up 0`` and nothing else, so alerts see the outage instead of stale data.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import redis
import redis.asyncio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from dispatcher import fleetmetrics, redisconn
from dispatcher.keys import Keys
from dispatcher.settings import Settings

CACHE_SECONDS = 1.0
PlanFactory = Callable[[Keys], Any]


async def run_plan(client: redis.asyncio.Redis, plan: Any) -> dict[str, Any]:
    """Run a read plan (a generator of command batches) with one pipeline per batch."""
    batch: Sequence[tuple[Any, ...]] = next(plan)
    while True:
        pipe = client.pipeline(transaction=False)
        for command in batch:
            pipe.execute_command(*command)
        replies = await pipe.execute() if batch else []
        try:
            batch = plan.send(replies)
        except StopIteration as done:
            return dict(done.value)


class SnapshotCache:
    """The last snapshot of a plan, read again at most every ``ttl`` seconds; concurrent callers
    share one read."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, factory: PlanFactory, ttl: float):
        self._client, self._keys, self._factory, self._ttl = client, keys, factory, ttl
        self._lock = asyncio.Lock()
        self._value: dict[str, Any] | None = None
        self._at = 0.0
        self._began = 0.0  # when the read of the current value began
        self.last_read_seconds = 0.0

    async def get(self, newer_than: float | None = None) -> dict[str, Any]:
        """The snapshot; ``newer_than`` (a ``time.monotonic()``): one whose read began after it
        (what an event seen at that moment needs), shared by callers that saw the same event."""
        async with self._lock:
            now = time.monotonic()
            stale = now - self._at >= self._ttl or (
                newer_than is not None and self._began <= newer_than
            )
            if self._value is None or stale:
                started = time.perf_counter()
                self._began = time.monotonic()
                self._value = await run_plan(self._client, self._factory(self._keys))
                self.last_read_seconds = time.perf_counter() - started
                self._at = time.monotonic()
            return self._value


class _Static(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(families: Iterable[Metric]) -> bytes:
    """Families as Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static(families))
    return generate_latest(registry)


def exporter_app(settings: Settings, ttl: float = CACHE_SECONDS) -> Starlette:
    """The exporter's app: ``/metrics`` and ``/healthz``."""
    client = redisconn.async_client(settings.redis_url, 16, 5.0, socket_timeout=5)
    cache = SnapshotCache(client, Keys(settings.namespace), fleetmetrics.fleet_plan, ttl)

    async def metrics(request: Request) -> Response:
        try:
            snapshot = await cache.get()
        except redis.RedisError:
            up = GaugeMetricFamily("dispatcher_exporter_redis_up", "1 when Redis answered", value=0)
            return Response(render([up]), media_type=CONTENT_TYPE_LATEST)
        families = fleetmetrics.fleet_families(snapshot)
        families += [
            GaugeMetricFamily("dispatcher_exporter_redis_up", "1 when Redis answered", value=1),
            GaugeMetricFamily(
                "dispatcher_exporter_read_seconds",
                "Time the last Redis read of the snapshot took",
                value=cache.last_read_seconds,
            ),
        ]
        return Response(render(families), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    app = Starlette(
        routes=[Route("/metrics", metrics), Route("/healthz", healthz)], lifespan=lifespan
    )
    app.state.cache = cache
    return app
