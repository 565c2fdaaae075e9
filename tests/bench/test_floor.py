"""Smoke test of ``python -m bench --quick --scenario floor``: every step at a tiny size, for real.

The harness starts its own pods, simulated runners, producers, result writers and a plain rq
SimpleWorker. Checked: the run completes, every step's output is there and complete (each target
has a measured value), every submitted job reached exactly one runner (rq: ran exactly once), the
Markdown report and the SUMMARY.md block are written, and no key of the run is left in Redis.
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
pytest.importorskip("rq", reason="the peer scenario runs plain rq")

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300  # s: ~45 s on an idle 2-core machine; generous for a busy one
SYSTEMS = ("pubsub", "poll", "poll_lockstep")
LATENCY_RUNS = [(step, system) for step in ("small", "headline") for system in SYSTEMS]
ALL_RUNS = [*LATENCY_RUNS, ("small", "rq"), ("headline", "rq")]


@pytest.fixture(scope="module")
def floor_run(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-floor")
    command = [sys.executable, "-m", "bench", "--quick", "--scenario", "floor"]
    command += ["--redis-url", redis_url, "--results-dir", str(out), "--summary", "yes"]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the harness stops its own processes and cleans up on SIGTERM
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"the floor scenario took over {TIMEOUT} s:\n{stdout[-3000:]}{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    files = sorted(out.glob("bench-*.json"))
    assert len(files) == 1, list(out.iterdir())
    data: dict[str, Any] = json.loads(files[0].read_text())
    data["_dir"] = str(out)
    data["_stdout"] = stdout
    return data


def test_every_step_ran_without_error(floor_run: dict[str, Any]) -> None:
    assert floor_run["errors"] == {}
    assert set(floor_run["scenarios"]) == {"floor"}
    f = floor_run["scenarios"]["floor"]
    assert f["errors"] == {}
    assert set(f["runs"]) == {"small", "headline", "idle", "throughput", "connmem"}
    assert set(f["runs"]["small"]) == set(f["runs"]["headline"]) == {*SYSTEMS, "rq", "chain"}
    for step in ("small", "headline"):  # the bare chain: every message measured, at the rate
        bare = f["runs"][step]["chain"]
        assert bare["rate"] == f["plan"][step]["rate"] and bare["count"] >= 50
        assert 0 < bare["latency_ms"]["p50"] <= bare["latency_ms"]["p99"]
    assert set(f["runs"]["idle"]) == {"pubsub", "poll"}
    assert len(f["loadavg"]["start"]) == len(f["loadavg"]["end"]) == 3


def test_every_job_reached_exactly_one_runner_or_worker(floor_run: dict[str, Any]) -> None:
    runs = floor_run["scenarios"]["floor"]["runs"]
    for step, system in ALL_RUNS:
        r = runs[step][system]
        assert r["submitted"] > 0, (step, system)
        assert r["delivered"] == r["submitted"], (step, system)
        assert (r["lost"], r["duplicates"], r.get("unknown", 0)) == (0, 0, 0), (step, system)
        assert r["latency_ms"]["count"] == r["submitted"] == len(r["samples_ms"])
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    for step, system in LATENCY_RUNS:
        r = runs[step][system]
        assert r["connect_errors"] == 0 and r["server_closed"] == {}, (step, system)
    assert runs["small"]["rq"]["measures"] == "enqueue call → job function starts"


def test_every_target_has_a_measured_value(floor_run: dict[str, Any]) -> None:
    rows = [r for r in floor_run["targets"] if r["scenario"] == "floor"]
    targeted = [r for r in rows if r["target"] != "—"]
    assert len([r for r in targeted if not r["figure"].startswith("lost / dup")]) == 7
    for row in targeted:
        assert row["value"] is not None, row["figure"]
        assert row["met"] in (True, False), row["figure"]
    once = [r for r in rows if r["figure"].startswith("lost / dup")]
    assert len(once) == len(ALL_RUNS) and all(r["met"] is True for r in once)
    idle = floor_run["scenarios"]["floor"]["runs"]["idle"]
    for mode in ("pubsub", "poll"):
        assert idle[mode]["redis"]["commands_per_s"] > 0


def test_report_summary_and_printed_table(floor_run: dict[str, Any]) -> None:
    out = Path(floor_run["_dir"])
    report = (out / Path(floor_run["files"]["markdown"]).name).read_text()
    for part in (
        "| measure | measured | target | met? |",
        "## What each measure is",
        "## (a) ",
        "## (b) ",
        "## (c) The peer to beat",
        "## The poll baseline, restated",
        "plain rq",
    ):
        assert part in report, part
    summary = (out / "SUMMARY.md").read_text()
    assert "<!-- bench:floor:start -->" in summary and "## 7. Dispatch at the floor" in summary
    assert "| measure | measured | target | met? |" in floor_run["_stdout"]
    assert floor_run["files"]["png"] is None  # the floor scenario draws no chart


def test_no_key_of_the_run_is_left(floor_run: dict[str, Any], redis_url: str) -> None:
    assert floor_run["keys_left"] == 0
    client = redis.Redis.from_url(redis_url)
    try:
        ns = floor_run["namespace"]
        assert list(client.scan_iter(match=f"{ns}*", count=1000)) == []
        assert list(client.scan_iter(match=f"rq:*{ns}*", count=1000)) == []
        assert [m for m in client.smembers("rq:workers") if ns.encode() in m] == []
    finally:
        client.close()
