"""The executor's gate (the job's group is recorded before its command runs) and --job-user."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.executor import Executor, ExecutorConfig, WorkDirError
from runner.jobuser import JobUser, resolve_job_user
from runner.procgroup import ProcessGroup, live_members
from tests.runner.test_runner_executor import job

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
PATH_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def executor(work: Path, **options: Any) -> Executor:
    return Executor(ExecutorConfig(work_dir=work, kill_grace=0.5, base_env=PATH_ENV, **options))


async def test_the_group_is_recorded_before_the_command_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    seen: list[tuple[ProcessGroup, bool, list[int]]] = []

    def on_start(group: ProcessGroup) -> None:
        seen.append((group, marker.exists(), live_members(group)))

    outcome = await executor(tmp_path / "work").run(
        job({"script": f"touch {marker}; echo $$"}), asyncio.Event(), on_start
    )
    assert outcome.error is None
    [(group, ran_before, members)] = seen
    assert not ran_before and marker.exists()
    assert members == [group.pgid] and group.start_time is not None and group.boot_id
    assert outcome.stdout == f"{group.pgid}\n"  # the command is the group's leader (exec)


async def test_a_group_that_cannot_be_recorded_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    groups: list[ProcessGroup] = []

    def on_start(group: ProcessGroup) -> None:
        groups.append(group)
        raise OSError(28, "No space left on device")

    outcome = await executor(tmp_path / "work").run(
        job({"script": f"touch {marker}"}), asyncio.Event(), on_start
    )
    assert (
        outcome.error == "cannot record the job's process group: [Errno 28] No space left on device"
    )
    assert not marker.exists() and live_members(groups[0]) == []


async def test_a_missing_command_is_reported_without_starting_anything(tmp_path: Path) -> None:
    started: list[ProcessGroup] = []
    outcome = await executor(tmp_path / "work").run(
        job({"command": ["no-such-command-here", "x"]}), asyncio.Event(), started.append
    )
    assert (
        outcome.error
        == "cannot start the job: no-such-command-here: command not found or not executable"
    )
    assert outcome.exit_code is None and started == []


async def test_an_output_link_out_of_the_work_dir_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not for the job")
    script = (
        f"ln -s {secret} out.txt; mkdir d; ln -s {tmp_path} d/up; mkfifo fifo; echo fine > ok.txt"
    )
    outputs = ["out.txt", "d/up/secret", "ok.txt", "d", "fifo"]
    outcome = await executor(tmp_path / "work").run(
        job({"script": script, "outputs": outputs}), asyncio.Event()
    )
    # a FIFO would block a plain open() for ever; a directory is not a file
    assert outcome.results == {
        "out.txt": None,
        "d/up/secret": None,
        "ok.txt": "fine\n",
        "d": None,
        "fifo": None,
    }


# -- --job-user ---------------------------------------------------------------------------------


def nobody() -> JobUser | None:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return None
    return resolve_job_user("nobody", euid=os.geteuid()) if os.geteuid() == 0 else None


needs_root = pytest.mark.skipif(nobody() is None, reason="needs root and a user 'nobody'")


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A directory other users may pass through (the test's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="dispatch-runner-test-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@needs_root
async def test_a_job_runs_as_the_job_user_in_a_work_dir_it_owns(shared_base: Path) -> None:
    user = nobody()
    assert user is not None
    runner = executor(shared_base / "work", job_user=user)
    runner.prepare()
    assert stat.S_IMODE((shared_base / "work").stat().st_mode) == 0o711
    script = (
        'id -u; id -g; echo "$HOME $USER"; stat -c %u "$PWD" "$DISPATCH_WORK_DIR"; touch written'
    )
    outcome = await runner.run(
        job({"script": script, "cwd": "sub", "outputs": ["sub/written"]}), asyncio.Event()
    )
    assert outcome.error is None, outcome.stderr
    assert outcome.stdout == (
        f"{user.uid}\n{user.gid}\n{user.home} nobody\n{user.uid}\n{user.uid}\n"
    )
    assert outcome.results == {"sub/written": ""}


@needs_root
def test_a_work_dir_the_job_user_cannot_reach_is_refused_at_start(tmp_path: Path) -> None:
    user = nobody()
    assert user is not None
    tmp_path.chmod(0o700)
    with pytest.raises(WorkDirError) as refused:
        executor(tmp_path / "work", job_user=user).prepare()
    assert f"job user nobody cannot reach the work directory {tmp_path / 'work'}" in str(
        refused.value
    )
    assert str(refused.value).endswith("; choose another --work-dir")
