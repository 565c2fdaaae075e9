"""--job-user: resolving the user, the one-line errors, the work directory it must reach."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import build_parser, make_config
from runner.jobuser import (
    DirStat,
    JobUser,
    JobUserError,
    can_search,
    job_environment,
    resolve_job_user,
    unreachable,
)

ARGS = ["--url", "http://d:8080", "--runner", "r1", "--token", "t0k"]
ALICE = pwd.struct_passwd(("alice", "x", 1500, 1600, "", "/home/alice", "/bin/sh"))
USER = JobUser("alice", 1500, 1600, (1600, 1700), "/home/alice")
NO_USER = "no-such-user-dispatch-test"


def lookup(name: str) -> pwd.struct_passwd:
    if name == "alice":
        return ALICE
    if name == "root":
        return pwd.struct_passwd(("root", "x", 0, 0, "", "/root", "/bin/sh"))
    raise KeyError(name)


def resolve(name: str, euid: int = 0) -> JobUser:
    return resolve_job_user(name, euid=euid, getpwnam=lookup, getgrouplist=lambda n, g: [g, 1700])


def test_a_user_is_resolved_with_its_groups() -> None:
    assert resolve("alice") == USER


@pytest.mark.parametrize(
    ("name", "euid", "message"),
    [
        ("alice", 1000, "--job-user alice: the agent must run as root to switch users"),
        ("bob", 0, "--job-user bob: no such user"),
        ("root", 0, "--job-user root: is root; pick an unprivileged user"),
    ],
)
def test_an_unusable_job_user_is_refused(name: str, euid: int, message: str) -> None:
    with pytest.raises(JobUserError) as refused:
        resolve(name, euid)
    assert str(refused.value) == message


def test_the_job_sees_its_own_user_in_its_environment() -> None:
    assert job_environment(USER) == {"HOME": "/home/alice", "USER": "alice", "LOGNAME": "alice"}
    assert job_environment(None) == {}


def entry(path: str, uid: int, gid: int, mode: int) -> DirStat:
    return DirStat(Path(path), uid, gid, stat.S_IFDIR | mode)


@pytest.mark.parametrize(
    ("uid", "gid", "mode", "passes"),
    [
        (0, 0, 0o711, True),  # others may search
        (0, 0, 0o770, False),
        (0, 1700, 0o710, True),  # a supplementary group
        (1500, 0, 0o700, True),  # the owner
        (1500, 0, 0o077, False),  # the owner's bits count, not the others'
    ],
)
def test_search_permission(uid: int, gid: int, mode: int, passes: bool) -> None:
    assert can_search(entry("/d", uid, gid, mode), USER) is passes


def test_the_first_directory_the_user_cannot_pass_is_named() -> None:
    chain = [entry("/", 0, 0, 0o755), entry("/srv", 0, 0, 0o700), entry("/srv/w", 0, 0, 0o711)]
    assert unreachable(chain, USER) == Path("/srv")
    assert unreachable([chain[0], chain[2]], USER) is None


# -- the command line: one line on stderr, status 2 ------------------------------------------------


def config_error(argv: list[str], environ: dict[str, str], euid: int, capsys) -> str:
    parser = build_parser()
    with pytest.raises(SystemExit) as exited:
        make_config(parser, parser.parse_args(argv), environ, euid=euid)
    assert exited.value.code == 2
    err: str = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_job_user_when_the_agent_is_not_root(capsys: pytest.CaptureFixture[str]) -> None:
    err = config_error([*ARGS, "--job-user", "nobody"], {}, 1000, capsys)
    assert (
        err == "dispatch-runner: error: --job-user nobody: the agent must run as root to "
        "switch users\n"
    )


def test_job_user_from_the_environment_is_checked_too(capsys: pytest.CaptureFixture[str]) -> None:
    err = config_error(ARGS, {"DISPATCH_RUNNER_JOB_USER": NO_USER}, 0, capsys)
    assert err == f"dispatch-runner: error: --job-user {NO_USER}: no such user\n"


def test_a_job_user_reaches_the_config() -> None:
    parser = build_parser()
    cfg = make_config(parser, parser.parse_args([*ARGS, "--job-user", "nobody"]), {}, euid=0)
    assert cfg.job_user is not None and cfg.job_user.name == "nobody"
    assert cfg.job_user.uid == pwd.getpwnam("nobody").pw_uid


def test_the_command_refuses_an_unknown_job_user_in_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("dispatch-runner")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "runner"]
    done = subprocess.run(
        [*command, *ARGS, "--state-dir", str(tmp_path), "--job-user", NO_USER],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "DISPATCH_RUNNER_TOKEN"},
    )
    assert done.returncode == 2
    assert done.stderr == f"dispatch-runner: error: --job-user {NO_USER}: no such user\n"
    assert not (tmp_path / "r1").exists()  # refused before anything was touched


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_a_work_dir_the_job_user_cannot_reach_is_one_line_and_status_1(tmp_path: Path) -> None:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("needs a user 'nobody'")
    tmp_path.chmod(0o700)
    script = Path(sys.executable).with_name("dispatch-runner")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "runner"]
    done = subprocess.run(
        [*command, *ARGS[:4], "--state-dir", str(tmp_path / "state"), "--job-user", "nobody"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DISPATCH_RUNNER_TOKEN": "t0k"},
    )
    assert done.returncode == 1
    [line] = done.stderr.splitlines()  # before connecting: nothing else is said
    assert " ERROR runner: job user nobody cannot reach the work directory " in line
    assert line.endswith("; choose another --work-dir")
