"""deploy/grafana/: every metric a panel queries is one a real pod's /metrics or the real
exporter's /metrics serves (scraped here, with a runner connected and a job delivered)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.adminserver import start_app, start_listener
from dispatcher.exporter import exporter_app
from tests.dispatcher.support import submit, take_job
from tests.podkit import add_runner, connect

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dispatcher.json"
METRIC = re.compile(r"\b(dispatcher_[a-z_]+)\b")
BUILTIN = {"up"}


def sample_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names |= {s.name for s in family.samples}
        if family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def queried() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    return {m for e in exprs for m in METRIC.findall(e)}


async def test_dashboard_queries_name_served_metrics(launch, settings, rclient, keys):
    pod = await launch(settings)
    runner = await connect(pod, "g1", add_runner(settings, "g1", ["linux"]))
    submit(rclient, keys, spec="linux")
    await take_job(runner)
    admin = await start_listener(pod.server.pod.metrics.registry, "127.0.0.1", 0)
    exporter = await start_app(exporter_app(settings, ttl=0), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as http:
            pod_text = (await http.get(f"http://127.0.0.1:{admin.port}/metrics")).text
            fleet_text = (await http.get(f"http://127.0.0.1:{exporter.port}/metrics")).text
    finally:
        await admin.stop()
        await exporter.stop()
    served = sample_names(pod_text) | sample_names(fleet_text)
    missing = queried() - served - BUILTIN
    assert not missing, f"panels query metrics nobody serves: {sorted(missing)}"
    # and the dashboard covers both sources
    assert queried() & sample_names(pod_text)
    assert queried() & sample_names(fleet_text)


def test_alert_rules_name_served_metrics_only():
    """The alert rules' metrics are a subset of what the dashboard (checked above) or the
    scrape names; listed statically here so a renamed metric fails fast."""
    rules = (DASHBOARD.parents[1] / "prometheus" / "alerts.yaml").read_text()
    assert set(METRIC.findall(rules)) <= queried() | {
        "dispatcher_presence_lost_total",
        "dispatcher_doorbell_probe_failures_total",
        "dispatcher_exporter_redis_up",
    }
