"""dispatch-runner: unusable directories are one line and exit status 1, before any connection;
the --help text names the environment and shows examples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = str(Path(sys.executable).parent / "dispatch-runner")
# nothing listens on port 1: the run would fail later, the directory check comes first
ARGS = [RUNNER, "--url", "http://127.0.0.1:1", "--runner", "r1"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISPATCH_RUNNER_TOKEN": "tok-for-tests"}
    return subprocess.run([*ARGS, *args], capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize("option", ["--state-dir", "--work-dir"])
def test_a_file_where_a_directory_belongs_is_one_line(tmp_path: Path, option: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    extra = [] if option == "--state-dir" else ["--state-dir", str(tmp_path / "state")]
    done = run(*extra, option, str(a_file))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot use {option}: " in done.stderr and "Not a directory" in done.stderr


def test_an_unwritable_state_dir_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    done = run("--state-dir", str(locked))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot use --state-dir" in done.stderr


def test_help_shows_examples_and_the_environment() -> None:
    done = subprocess.run([RUNNER, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert "\nexamples:\n  DISPATCH_RUNNER_TOKEN=" in done.stdout
    assert "\nenvironment:\n  DISPATCH_RUNNER_TOKEN" in done.stdout
    assert "exit status" in done.stdout
