"""Running jobs as another user (``--job-user``): resolving the user and checking the work dir.

Why: a job that runs as the agent's own user can do what the agent can: signal it, read files it
can read, and on a system without ``PR_SET_DUMPABLE`` trace it and read the token from its memory.
A job running as a different, unprivileged user cannot. The switch happens in the forked child
(``subprocess``'s ``user``/``group``/``extra_groups``: setgroups, setgid, setuid before exec), so
only an agent running as root can do it.

The job's work directory is created by the agent and handed to the job user; every directory
above it must let that user through (search permission), which ``unreachable`` checks from stat
results so the mistake is one line at start, not a failed job later.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

JOB_USER_ENV = "DISPATCH_RUNNER_JOB_USER"


class JobUserError(ValueError):
    """``--job-user`` cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class JobUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, as initgroups(3) would set them
    home: str


def resolve_job_user(
    name: str,
    *,
    euid: int,
    getpwnam: Callable[[str], pwd.struct_passwd] = pwd.getpwnam,
    getgrouplist: Callable[[str, int], list[int]] = os.getgrouplist,
) -> JobUser:
    """The user ``name`` for the jobs; raises ``JobUserError``."""
    if euid != 0:
        raise JobUserError(f"--job-user {name}: the agent must run as root to switch users")
    try:
        entry = getpwnam(name)
    except KeyError:
        raise JobUserError(f"--job-user {name}: no such user") from None
    if entry.pw_uid == 0:
        raise JobUserError(f"--job-user {name}: is root; pick an unprivileged user")
    groups = tuple(getgrouplist(entry.pw_name, entry.pw_gid))
    return JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


@dataclass(frozen=True)
class DirStat:
    path: Path
    uid: int
    gid: int
    mode: int


def can_search(entry: DirStat, user: JobUser) -> bool:
    """Whether ``user`` may pass through the directory (the execute bit; ACLs are not read)."""
    if entry.uid == user.uid:
        return bool(entry.mode & stat.S_IXUSR)
    if entry.gid == user.gid or entry.gid in user.groups:
        return bool(entry.mode & stat.S_IXGRP)
    return bool(entry.mode & stat.S_IXOTH)


def unreachable(chain: Sequence[DirStat], user: JobUser) -> Path | None:
    """The first directory of ``chain`` (``/`` down to the work dir) ``user`` cannot pass."""
    return next((entry.path for entry in chain if not can_search(entry, user)), None)


def stat_chain(directory: Path) -> list[DirStat]:
    """Stat results of ``directory`` and every directory above it, from ``/`` down."""
    path = directory.resolve()
    chain = []
    for entry in [*reversed(path.parents), path]:
        st = entry.stat()
        chain.append(DirStat(entry, st.st_uid, st.st_gid, st.st_mode))
    return chain


def reach_problem(base: Path, user: JobUser) -> str | None:
    """Open the existing base work directory to ``user`` (0711: pass, not list) and say, in one
    line, what still keeps that user from it; None when nothing does."""
    base.chmod(0o711)
    blocked = unreachable(stat_chain(base), user)
    if blocked is None:
        return None
    return (
        f"job user {user.name} cannot reach the work directory {base}: no search permission "
        f"on {blocked}; choose another --work-dir"
    )


def job_environment(user: JobUser | None) -> dict[str, str]:
    """Variables that must describe the job's user rather than the agent's."""
    if user is None:
        return {}
    return {"HOME": user.home, "USER": user.name, "LOGNAME": user.name}
