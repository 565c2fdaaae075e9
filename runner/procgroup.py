"""A job's process group: what the spool records about it, and how a restarted agent ends it.

Why: a job runs in its own session, so when the agent is killed (``kill -9``, OOM, a crash) its
processes go on running, invisible to the next agent. The executor therefore records the group in
the spool *before* the job's command starts (the command waits on a gate until then), and the next
agent, before it connects or takes a job, kills what is left of that group and waits until it is
gone.

Process ids are reused, so a bare number is not enough. A process group is identified by its
leader's pid (``pgid``), its session (a job is a session of its own, so ``sid == pgid``), the
leader's start time (clock ticks since boot) and the boot id. The kernel keeps a pid number
allocated while any process still uses it as its group or session id, so:

- the leader is alive with the recorded start time: the group is the job's;
- the leader is alive with another start time: the number was reused, so the job's group had
  already emptied: nothing to kill;
- the leader is gone: every process whose group and session are ``pgid`` and that started no
  earlier than the leader belongs to the job's group (or to a later group with a reused leader
  pid that has also died: a residual risk, documented).

A process that left the job's session (``setsid``, a daemon) cannot be found this way; only a
cgroup would hold it. Linux only: without ``/proc`` nothing is found and nothing is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

PROC = Path("/proc")
BOOT_ID = PROC / "sys/kernel/random/boot_id"
GONE_STATES = frozenset({"Z", "X"})  # a zombie has exited; only its parent's wait() remains
POLL_INTERVAL = 0.02
KILL_WAIT = 30.0  # after SIGKILL, how long a process may take to go (it may be in the D state)


class ProcessGroup(msgspec.Struct, frozen=True):
    """A job's process group as recorded in the spool."""

    pgid: int
    start_time: int | None = None  # the leader's start, clock ticks since boot (/proc/PID/stat)
    boot_id: str = ""


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` that identify a process's group."""

    pid: int
    state: str
    pgrp: int
    session: int
    start_time: int


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/PID/stat`` line; raises ``ValueError`` if it is not one.

    The command name (field 2) is in parentheses and may contain anything, spaces and ``)``
    included, so the fields are counted from the last ``)``.
    """
    head, sep, tail = text.rpartition(")")
    if not sep:
        raise ValueError("no ')' in a stat line")
    fields = tail.split()  # fields[0] is field 3 (state)
    if len(fields) < 20:
        raise ValueError("too few fields in a stat line")
    pid = int(head.split("(", 1)[0])
    return ProcStat(pid, fields[0], int(fields[2]), int(fields[3]), int(fields[19]))


def members(group: ProcessGroup, processes: Iterable[ProcStat]) -> list[int]:
    """The live processes of ``group`` among ``processes`` (see the module docstring)."""
    live = [p for p in processes if p.state not in GONE_STATES]
    earliest = group.start_time if group.start_time is not None else 0
    leader = next((p for p in live if p.pid == group.pgid), None)
    if leader is not None and group.start_time is not None and leader.start_time != earliest:
        return []  # the pid was reused: the job's group had emptied before that
    return sorted(
        p.pid
        for p in live
        if p.pgrp == group.pgid and p.session == group.pgid and p.start_time >= earliest
    )


# -- reading /proc ----------------------------------------------------------------------------


def read_boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def describe(pid: int) -> ProcessGroup:
    """The record for the new session led by ``pid`` (a job just started)."""
    try:
        start: int | None = parse_stat((PROC / str(pid) / "stat").read_text()).start_time
    except (OSError, ValueError):
        start = None
    return ProcessGroup(pgid=pid, start_time=start, boot_id=read_boot_id())


def read_processes() -> list[ProcStat]:
    """Every process this agent can see; those that vanish while being read are skipped."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(PROC):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError):
                found.append(parse_stat(Path(entry.path, "stat").read_text()))
    return found


def live_members(group: ProcessGroup) -> list[int]:
    if group.boot_id and group.boot_id != read_boot_id():
        return []  # recorded before a reboot: nothing of it can be left
    return members(group, read_processes())


# -- stopping ---------------------------------------------------------------------------------


class GroupSurvived(RuntimeError):
    """Processes of a recorded job were still there after SIGKILL and the wait."""


async def stop_group(group: ProcessGroup, grace: float, kill_wait: float = KILL_WAIT) -> list[int]:
    """Kill what is left of ``group``: SIGTERM, SIGKILL after ``grace`` s, then wait until every
    process is gone. Returns the pids found at first (empty: nothing was left).

    Raises ``GroupSurvived`` if some are still there ``kill_wait`` s after SIGKILL.
    """
    found = live_members(group)
    if not found:
        return []
    _signal_group(group.pgid, signal.SIGTERM)
    if await _wait_gone(group, grace):
        return found
    _signal_group(group.pgid, signal.SIGKILL)
    if await _wait_gone(group, kill_wait):
        return found
    raise GroupSurvived(f"processes {live_members(group)} of group {group.pgid} survived SIGKILL")


async def _wait_gone(group: ProcessGroup, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while live_members(group):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_INTERVAL)
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
