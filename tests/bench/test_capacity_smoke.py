"""Smoke test of the capacity scenario (issue 13) at a tiny size, checked for real.

Runs ``python -m bench.capacity --quick`` as a separate process: it starts its own standalone
Redis and 3-primary Redis Cluster, pods, writers, simulated runners and producers, and must stop
them all. Then checks what must hold at any size: every job delivered exactly once in every
phase, namespaces placed on the shards the phase says, and the JSON and Markdown complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.servers import HAVE_REDIS

pytest.importorskip("psutil", reason="the benchmark harness needs psutil (bench extra)")
pytest.importorskip("matplotlib", reason="the benchmark harness needs matplotlib (bench extra)")
pytestmark = pytest.mark.skipif(not HAVE_REDIS, reason="needs redis-server and redis-cli")

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("capacity")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.capacity", "--quick", "--results-dir", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the harness stops its children and servers on SIGTERM
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(
            f"bench.capacity --quick took over {TIMEOUT} s:\n{stdout[-3000:]}{stderr[-3000:]}"
        )
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    files = sorted(out.glob("capacity-*.json"))
    assert len(files) == 1, list(out.iterdir())
    data: dict[str, Any] = json.loads(files[0].read_text())
    data["_dir"] = out
    data["_stdout"] = stdout
    return data


def test_every_phase_ran_and_the_environment_is_recorded(run: dict[str, Any]) -> None:
    assert run["errors"] == {}
    assert set(run["phases"]) == {"latency", "throughput", "shards", "pods"}
    assert run["quick"] is True and "--quick" in run["command"]
    for key in ("cpu_count", "python", "redis_version", "git_commit"):
        assert run["environment"][key], key
    assert len(run["loadavg_at_start"]) == 3 and len(run["loadavg_at_end"]) == 3
    assert set(run["backends"]) == {"standalone", "cluster"}
    assert run["backends"]["cluster"]["redis_url"].startswith("redis+cluster://")
    assert run["backends"]["cluster"]["results_redis_url"].startswith("redis://")


def test_every_job_was_delivered_exactly_once(run: dict[str, Any]) -> None:
    rows = [r for r in run["targets"] if r["figure"].startswith("lost")]
    assert len(rows) == 2 + 3 + 2 + 1  # latency rounds, throughput runs, shard runs, pods
    assert all(r["met"] for r in rows), rows
    lat = run["phases"]["latency"]
    for detail in lat["rounds_detail"]:
        assert detail["submitted"] > 0
        assert detail["delivered"] == detail["submitted"]
        assert detail["duplicates"] == 0 and detail["unknown"] == 0
        assert detail["producer_errors"] == 0 and detail["drained"]
        assert detail["connect_errors"] == 0 and detail["server_closed"] == {}
    for phase in ("throughput", "shards"):
        for r in run["phases"][phase]["runs"]:
            assert r["drained"] and r["acknowledged_per_s"] > 0
            for ns in r["namespaces"]:
                assert ns["submitted"] > 0 and ns["delivered"] == ns["submitted"], ns
                assert ns["duplicates"] == 0 and ns["protocol_errors"] == 0
    pods = run["phases"]["pods"]
    assert pods["submitted"] > 0 and pods["delivered"] == pods["submitted"]
    assert pods["duplicates"] == 0 and pods["server_closed"] == {}


def test_latency_compares_the_backends(run: dict[str, Any]) -> None:
    lat = run["phases"]["latency"]
    for name in ("standalone", "cluster"):
        assert lat[name]["latency_ms"]["count"] > 0
        assert lat[name]["latency_ms"]["p50"] > 0
    ratio = lat["ratio_cluster_over_standalone"]["p50"]
    assert isinstance(ratio, float) and ratio > 0
    assert run["targets"][0]["figure"] == "dispatch p50, cluster ÷ standalone"


def test_throughput_covers_pod_counts_and_both_backends(run: dict[str, Any]) -> None:
    runs = run["phases"]["throughput"]["runs"]
    assert [(r["backend"], r["pods"]) for r in runs] == [
        ("cluster", 2),
        ("cluster", 3),
        ("standalone", 2),
    ]
    for r in runs:
        assert r["redis_cpu_percent_busiest"] >= 0
        assert set(r["redis_cpu_percent_by_port"]) == {
            str(p) for p in run["backends"][r["backend"]]["data_ports"]
        }


def test_namespaces_land_where_the_shards_phase_says(run: dict[str, Any]) -> None:
    one, spread = run["phases"]["shards"]["runs"]
    placement = run["placement"]
    assert one["shards_used"] == 1 and spread["shards_used"] == 3
    assert len({placement[n["namespace"]]["primary"] for n in one["namespaces"]}) == 1
    assert len({placement[n["namespace"]]["primary"] for n in spread["namespaces"]}) == 3
    for r in (one, spread):
        for ns in r["namespaces"]:
            assert ns["namespace"].startswith("{") and ns["namespace"].endswith("}")
            assert ns["primary"] == placement[ns["namespace"]]["primary"]


def test_pods_phase_counts_what_one_pod_holds(run: dict[str, Any]) -> None:
    levels = run["phases"]["pods"]["levels"]
    assert [lv["runners"] for lv in levels] == run["sizes"]["pod_runners"]
    for lv in levels:
        assert lv["connected"] == lv["runners"] == lv["pod_websockets"]
        assert lv["pod_rss_idle_mib"] > 0 and lv["pod_redis_connections"] > 0
        assert lv["latency_ms"]["count"] == lv["submitted"] > 0


def test_markdown_has_every_table(run: dict[str, Any]) -> None:
    out: Path = run["_dir"]
    md = (out / f"capacity-{run['run_id']}.md").read_text()
    assert (out / "CAPACITY.md").read_text() == md  # --results-dir given: the latest is written
    for heading in (
        "### Dispatch latency, standalone vs cluster",
        "### Most jobs/s of one namespace (one shard)",
        "### One shard vs three",
        "### Runners per pod",
        "### Targets",
    ):
        assert heading in md
    assert "Load average at start" in md


def test_nothing_is_left_running(run: dict[str, Any]) -> None:
    psutil = pytest.importorskip("psutil")
    work = str(run["_dir"])
    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if work in cmdline:
            left.append(cmdline)
    assert left == []
