"""``python -m bench.fcallcost``: Redis's cost per function of a job lifecycle.

Run for real at its smallest size (one round of 200 lifecycles): by Redis's own meter
(``INFO commandstats``) on the test Redis, and by instruction count under callgrind (when valgrind
is installed). Checked: every function of the lifecycle is measured with its number of calls, the
run leaves no key behind, and the instruction count is the same run after run (the reason the
tool exists: timings on this machine vary by a quarter for the same code).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
PER_LIFECYCLE = ("submit", "ready", "start", "finish")  # one call each per lifecycle
PER_ROUND = ("pump", "record")  # one call each per round of 200


def _run(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.fcallcost", "--jobs", "200", *args]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _check(report: dict[str, Any], unit: str) -> None:
    assert report["jobs"] == 200 and report["unit"] == unit
    functions = report["functions"]
    assert set(functions) == {*PER_LIFECYCLE, *PER_ROUND}
    for name in PER_LIFECYCLE:
        assert functions[name]["calls"] == 200
        assert functions[name][f"{unit}_per_call"] > 0
    for name in PER_ROUND:
        assert functions[name]["calls"] == 1
    total = sum(f[f"{unit}_per_lifecycle"] for f in functions.values())
    assert report[f"{unit}_per_lifecycle"] == pytest.approx(total, abs=1)


def test_commandstats_measures_every_function_and_leaves_no_key(
    redis_url: str, rclient: redis.Redis
) -> None:
    before = set(rclient.scan_iter(match="fcost*", count=1000))
    _check(_run("--redis-url", redis_url), "us")
    assert set(rclient.scan_iter(match="fcost*", count=1000)) == before


@pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("callgrind_control") is None,
    reason="--callgrind needs valgrind",
)
def test_callgrind_counts_are_the_same_run_after_run() -> None:
    first, second = _run("--callgrind"), _run("--callgrind")
    _check(first, "instructions")
    _check(second, "instructions")
    # a lifecycle is ~1.5 M instructions in Redis; two runs agree far closer than timings do
    assert first["instructions_per_lifecycle"] > 100_000
    assert second["instructions_per_lifecycle"] == pytest.approx(
        first["instructions_per_lifecycle"], rel=0.02
    )
