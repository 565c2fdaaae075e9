"""Smoke test of the benchmark harness: every scenario at a tiny size, checked for real.

Runs ``python -m bench --quick`` as a separate process (the harness starts pods, result writers,
runner simulators and producers of its own) into a temporary results directory, then checks the
figures that must hold at any size: every submitted job delivered exactly once, the lost doorbell
recovered, the namespace deleted, and the JSON, PNG and summary written with what they promise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip("psutil", reason="the benchmark harness needs psutil (bench extra)")
pytest.importorskip("matplotlib", reason="the benchmark harness needs matplotlib (bench extra)")

ROOT = Path(__file__).resolve().parents[2]
SCENARIO_KEYS = {"latency", "throughput", "idle", "connections", "lostbell"}


@pytest.fixture(scope="module")
def run(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--redis-url",
            redis_url,
            "--results-dir",
            str(out),
            "--summary",
            "yes",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the harness stops its own processes and cleans up on SIGTERM
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"python -m bench --quick took over 110 s:\n{stdout[-3000:]}{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    files = sorted(out.glob("bench-*.json"))
    assert len(files) == 1, list(out.iterdir())
    data: dict[str, Any] = json.loads(files[0].read_text())
    data["_dir"] = str(out)
    data["_stdout"] = stdout
    return data


def _healthy(result: dict[str, Any]) -> None:
    assert result["connect_errors"] == 0, result["first_connect_error"]
    assert result["server_closed"] == {}
    assert result["protocol_errors"] == 0


def test_json_has_every_scenario_and_the_environment(run: dict[str, Any]) -> None:
    assert run["errors"] == {}
    assert set(run["scenarios"]) == SCENARIO_KEYS
    env = run["environment"]
    for key in ("cpu_count", "python", "redis_version", "git_commit", "packages"):
        assert env[key], key
    assert "-m bench" in run["command"] and "--quick" in run["command"]
    assert run["quick"] is True
    assert {row["scenario"] for row in run["targets"]} == {
        "latency",
        "throughput",
        "idle",
        "connections",
        "lost doorbell",
    }


def test_latency_delivers_every_job_exactly_once_in_both_modes(run: dict[str, Any]) -> None:
    lat = run["scenarios"]["latency"]
    for mode in ("pubsub", "poll"):
        m = lat[mode]
        assert m["mode"] == mode
        assert m["submitted"] > 0
        assert m["delivered"] == m["submitted"]
        assert (m["lost"], m["duplicates"], m["unknown"]) == (0, 0, 0)
        assert m["latency_ms"]["count"] == m["submitted"] == len(m["samples_ms"])
        assert m["samples_ms"] == sorted(m["samples_ms"])
        assert 0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p99"] <= m["latency_ms"]["max"]
        _healthy(m)
    # the doorbell wakes a runner at once; the baseline waits for the next poll
    assert lat["poll"]["latency_ms"]["p50"] > lat["pubsub"]["latency_ms"]["p50"]
    assert lat["ratio_poll_over_pubsub"]["p50"] > 1


def test_throughput_counts_acknowledged_and_processed_jobs(run: dict[str, Any]) -> None:
    t = run["scenarios"]["throughput"]
    assert t["acknowledged_per_s"] > 0
    assert t["dispatched_per_s"] > 0
    assert t["processed_per_s"] > 0
    assert (t["duplicates"], t["unknown"]) == (0, 0)
    assert t["delivered"] <= t["submitted"]
    assert t["series"], "no time series sampled"
    _healthy(t)


def test_idle_measures_redis_commands_and_pod_cpu_in_both_modes(run: dict[str, Any]) -> None:
    idle = run["scenarios"]["idle"]
    for mode in ("pubsub", "poll"):
        m = idle[mode]
        assert m["connected"] == m["runners"]
        assert m["redis"]["fcall_per_s"] > 0  # at least the pods' ticks
        assert m["redis"]["commands_per_s"] >= m["redis"]["fcall_per_s"]
        assert set(m["cpu_percent"]) >= {"pod0", "pod1"}
        _healthy(m)
    assert "ratio_poll_over_pubsub" in idle


def test_connections_reports_rss_per_connection(run: dict[str, Any]) -> None:
    c = run["scenarios"]["connections"]
    assert c["connected"] == c["runners"] > 0
    assert isinstance(c["rss_per_connection_kib"], int | float)
    assert c["connections_opened_per_s"] > 0
    assert c["pod_rss_after_mib"] > 0
    _healthy(c)


def test_lost_doorbell_loses_nothing(run: dict[str, Any]) -> None:
    b = run["scenarios"]["lostbell"]
    assert b["connections_killed"] >= 1, "the pods' pub/sub connections were not found"
    assert b["submitted"] > 0
    assert (b["lost"], b["duplicates"], b["unknown"]) == (0, 0, 0)
    assert b["delivered"] == b["submitted"]
    # a lost doorbell is recovered by the resubscribe or the 1 s reconcile tick
    assert b["extra_delay_max_ms"] < 3000
    _healthy(b)


def test_namespace_is_deleted(run: dict[str, Any], redis_url: str) -> None:
    assert run["keys_left"] == 0
    client = redis.Redis.from_url(redis_url)
    try:
        ns = run["namespace"]
        assert ns.startswith("bench-")
        assert list(client.scan_iter(match=f"{ns}*", count=1000)) == []
        assert list(client.scan_iter(match=f"rq:*{ns}*", count=1000)) == []
    finally:
        client.close()


def test_chart_and_summary_are_written(run: dict[str, Any]) -> None:
    out = Path(run["_dir"])
    png = out / Path(run["files"]["png"]).name
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "SUMMARY.md").read_text()
    assert "## Against the targets" in summary
    for header in (
        "## 1. Latency",
        "## 2. Throughput",
        "## 3. Idle",
        "## 4. Connections",
        "## 5. Lost doorbell",
    ):
        assert header in summary
    assert summary.count("| latency |") >= 3


# -- the results scenario (issue 8): `python -m bench --quick --scenario results` -------------


@pytest.fixture(scope="module")
def results_run(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-results")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--scenario",
            "results",
            "--redis-url",
            redis_url,
            "--results-dir",
            str(out),
            "--summary",
            "yes",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"the results scenario took over 110 s:\n{stdout[-3000:]}{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    files = sorted(out.glob("bench-*.json"))
    assert len(files) == 1, list(out.iterdir())
    data: dict[str, Any] = json.loads(files[0].read_text())
    data["_dir"] = str(out)
    return data


def test_results_scenario_runs_every_phase(results_run: dict[str, Any]) -> None:
    assert results_run["errors"] == {}
    assert set(results_run["scenarios"]) == {"results"}
    r = results_run["scenarios"]["results"]
    assert r["errors"] == {}
    assert set(r["phases"]) == {"load", "drain", "postgres", "kill"}
    figures = {row["figure"] for row in results_run["targets"]}
    assert "processed ÷ acknowledged (load)" in figures
    assert any(f.startswith("kill -9") for f in figures)


def test_results_load_processes_what_runners_finished(results_run: dict[str, Any]) -> None:
    load = results_run["scenarios"]["results"]["phases"]["load"]
    assert load["acknowledged_per_s"] > 0
    assert load["processed_per_s"] > 0
    assert (load["duplicates"], load["unknown"]) == (0, 0)
    assert load["caught_up"] is True  # every acknowledged result processed in the end
    assert load["series"] and {"completed", "processed", "outbox", "rq_queue"} <= set(
        load["series"][0]
    )
    _healthy(load)


def test_results_drain_and_postgres_sink_finish(results_run: dict[str, Any]) -> None:
    phases = results_run["scenarios"]["results"]["phases"]
    drain = phases["drain"]
    assert drain["done"] is True and drain["processed"] == drain["results"] > 0
    pg = phases["postgres"]
    if "skipped" in pg:  # no PostgreSQL answering: the phase says why
        assert pg["skipped"]
    else:
        assert pg["done"] is True
        assert pg["rows_written"] == pg["results"] == pg["processed"]


def test_results_kill_recovers_the_killed_batch(results_run: dict[str, Any]) -> None:
    k = results_run["scenarios"]["results"]["phases"]["kill"]
    assert k["killed_batch_entries"] > 0
    assert k["done"] is True  # every result, the killed batch's included, processed


def test_results_cleanup_chart_and_summary(results_run: dict[str, Any], redis_url: str) -> None:
    assert results_run["keys_left"] == 0
    client = redis.Redis.from_url(redis_url)
    try:
        ns = results_run["namespace"]
        assert list(client.scan_iter(match=f"{ns}*", count=1000)) == []
        assert list(client.scan_iter(match=f"rq:*{ns}*", count=1000)) == []
    finally:
        client.close()
    out = Path(results_run["_dir"])
    png = out / Path(results_run["files"]["png"]).name
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "SUMMARY.md").read_text()
    assert "<!-- bench:results:start -->" in summary and "## 6. Results path" in summary
