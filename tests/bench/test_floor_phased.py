"""``bench.phased``: runners at independent poll phases; a nonsense spread is refused at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import common
from bench.common import SimConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spread", ["-1", "nan", "inf"])
def test_a_nonsense_spread_stops_the_simulator_with_one_line(tmp_path: Path, spread: str) -> None:
    cfg = tmp_path / "sim.json"
    common.dump(cfg, SimConfig(runners=[], out=str(tmp_path / "out.json")))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.phased", str(cfg), spread],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"bench.phased: spread must be a finite number of seconds >= 0: {float(spread)}"
    ]
    assert not (tmp_path / "out.json").exists()
