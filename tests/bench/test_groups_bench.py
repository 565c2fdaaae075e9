"""Smoke test of ``python -m bench.groups`` at a tiny size, as a separate process (its own
redis-server, pods and simulated runners, all stopped at the end): the JSON is complete, every
measured job arrived, and the work per call does not grow with the number of groups."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.servers import HAVE_REDIS

pytest.importorskip("psutil", reason="the benchmark harness needs psutil (bench extra)")
pytestmark = pytest.mark.skipif(not HAVE_REDIS, reason="needs redis-server")

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300
ARGS = ["--groups", "20", "--backlog", "2", "--runners", "3", "--jobs", "20", "--calls", "10"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("groups")
    argv = [sys.executable, "-m", "bench.groups", *ARGS, "--rounds", "1", "--results-dir", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("groups-*.json")
    data: dict[str, Any] = json.loads(path.read_text())
    data["_dir"], data["_stdout"] = out, proc.stdout
    return data


def test_every_measured_job_arrived(run: dict[str, Any]) -> None:
    for kind in ("none", "groups"):
        assert run["end_to_end"][kind]["latency_ms"]["count"] == 20
    assert set(run["ratio_groups_over_none"]) == {"p50", "p90", "p99"}


def test_work_per_call_does_not_grow_with_the_groups(run: dict[str, Any]) -> None:
    work = run["work_per_call"]
    assert set(work) == {"20", "2"}
    for op in ("ready", "submit", "finish"):
        assert (
            work["20"][op]["groups"]["commands_per_call"]
            == work["2"][op]["groups"]["commands_per_call"]
        )
        assert work["20"][op]["none"]["fcalls"] == 10


def test_the_report_and_the_command_are_recorded(run: dict[str, Any]) -> None:
    assert "| submit → job |" in run["_stdout"] and "groups ÷ none" in run["_stdout"]
    assert run["command"].startswith("python -m bench.groups --groups 20")


def test_nothing_is_left_running(run: dict[str, Any]) -> None:
    psutil = pytest.importorskip("psutil")
    work = str(run["_dir"])
    left = [
        " ".join(p.info["cmdline"] or [])
        for p in psutil.process_iter(["pid", "cmdline"])
        if work in " ".join(p.info["cmdline"] or [])
    ]
    assert left == []
