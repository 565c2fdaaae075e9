"""Usage in `dispatcher metrics-exporter`: counters by spec from ``{ns}:usage:total``, served by
the real exporter app over real Redis state written by the real writer task."""

from __future__ import annotations

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from dispatcher import functions
from dispatcher.exporter import exporter_app, render
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from dispatcher.usage_metrics import usage_families, usage_totals
from tests.jobflow import FakePod
from worker_bridge.tasks import WriterContext, process_batch

CTX = WriterContext(Settings())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_totals_parse_by_spec_only() -> None:
    raw = {
        b"ms:spec:linux": b"1500",
        b"jobs:spec:linux": b"2",
        b"ms:spec:mac": b"0",
        b"jobs:spec:mac": b"1",
        b"ms:group:org": b"9",  # never in the totals hash; ignored if it were
        b"bad": b"1",
    }
    totals = usage_totals(raw)
    assert totals == {
        "linux": {"runner_seconds": 1.5, "jobs": 2.0},
        "mac": {"runner_seconds": 0.0, "jobs": 1.0},
    }
    got = samples(render(usage_families(totals)).decode())
    assert got[("dispatcher_usage_runner_seconds_total", (("spec", "linux"),))] == 1.5
    assert got[("dispatcher_usage_jobs_total", (("spec", "mac"),))] == 1
    assert usage_totals(None) == {}


async def test_the_exporter_serves_usage_counters_that_count_each_job_once(
    settings: Settings, rclient: redis.Redis, keys: Keys
) -> None:
    pod = FakePod(rclient, keys, specs=("linux",))
    entries, ms = [], 0
    for _ in range(3):
        functions.run_sync(rclient, functions.submit(keys, "", "linux", "{}", 0, 60, 1))
        job_id, attempt = pod.run_next()
        entries.append(f"{job_id}:{attempt}")
    for _ in range(2):  # a batch processed twice
        process_batch(keys.namespace, entries, connection=rclient, ctx=CTX)
    for entry in entries:
        started, finished = rclient.hmget(keys.job(entry.rpartition(":")[0]), "started", "finished")
        assert started and finished
        ms += int(finished) - int(started)
    app = exporter_app(settings, ttl=0)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://exporter") as http,
    ):
        got = samples((await http.get("/metrics")).text)
    assert got[("dispatcher_usage_jobs_total", (("spec", "linux"),))] == 3
    assert got[("dispatcher_usage_runner_seconds_total", (("spec", "linux"),))] == ms / 1000
    assert rclient.ttl(keys.usage_total) == -1  # counters never expire
