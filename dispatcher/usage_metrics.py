"""Usage as Prometheus counters for ``dispatcher metrics-exporter``: runner-seconds and final jobs
by spec since the namespace began, from ``{ns}:usage:total`` (``dispatcher.usage``).

Only by spec: groups and runners are unbounded sets of names, poor Prometheus labels; their
figures are in the day hashes (``dispatcher usage --by group|runner``). Pure: the exporter's plan
reads the hash (one ``HGETALL``, O(specs)).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from dispatcher.usage import usage_by


def usage_totals(raw: Mapping[Any, Any] | None) -> dict[str, dict[str, float]]:
    """``{ns}:usage:total`` as {spec: {"runner_seconds", "jobs"}}, by spec name."""
    rows = usage_by(raw or {}, "spec")
    return {
        spec: {"runner_seconds": ms / 1000, "jobs": float(jobs)}
        for spec, (ms, jobs) in sorted(rows.items())
    }


def usage_families(totals: Mapping[str, Mapping[str, float]]) -> list[Metric]:
    """``dispatcher_usage_runner_seconds_total{spec}`` and ``dispatcher_usage_jobs_total{spec}``."""
    seconds = CounterMetricFamily(
        "dispatcher_usage_runner_seconds",
        "Running time (finished - started of the final attempt) of jobs recorded final, by spec",
        labels=["spec"],
    )
    jobs = CounterMetricFamily(
        "dispatcher_usage_jobs",
        "Jobs recorded final by the result writers (each once), by spec",
        labels=["spec"],
    )
    for spec, row in totals.items():
        seconds.add_metric([spec], row["runner_seconds"])
        jobs.add_metric([spec], row["jobs"])
    return [seconds, jobs]
