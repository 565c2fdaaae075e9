"""A results file keeps a run's options without naming paths of the machine it ran on."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.common import recorded_args


def test_paths_under_the_working_directory_are_kept_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(results_dir=tmp_path / "bench" / "results", rounds=3, name="x")
    assert recorded_args(args) == {"results_dir": "bench/results", "rounds": 3, "name": "x"}


def test_a_path_elsewhere_keeps_only_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    args = argparse.Namespace(results_dir=tmp_path / "elsewhere" / "out")
    assert recorded_args(args) == {"results_dir": "out"}
