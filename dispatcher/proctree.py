"""The process groups below a process, the last resort when `dispatcher up` must kill a runner.

The runner agent starts each job in its own session (so it can signal the whole job), which puts
the job outside the runner's process group: killing the runner's group leaves the job running under
init. So before killing a runner that did not stop, ``up`` collects the process groups of all its
descendants and kills those too. Linux only (it reads ``/proc``); elsewhere nothing is found.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")


def _table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process that can be read."""
    table: dict[int, tuple[int, int, str]] = {}
    with contextlib.suppress(OSError):
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) >= 3:
                table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def descendant_groups(pid: int) -> set[int]:
    """Process groups of ``pid``'s live descendants, other than ``pid``'s and this process's."""
    table = _table()
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = list(children.get(pid, []))
    while todo:
        current = todo.pop()
        if current in found:
            continue
        found.add(current)
        todo.extend(children.get(current, []))
    groups = {table[p][1] for p in found if table[p][2] != "Z"}
    return groups - {pid, os.getpgrp(), 0, 1}


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting to be reaped is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not PROC.is_dir():
        return True  # no /proc: the signal check is all there is
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False  # gone since the signal check
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def kill_groups(groups: set[int]) -> None:
    """SIGKILL every group in ``groups``; ones already gone are skipped."""
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def groups_alive(groups: set[int]) -> bool:
    """Whether any running (not zombie) process belongs to one of ``groups``."""
    return any(pgrp in groups and state != "Z" for _, pgrp, state in _table().values())


def wait_groups_gone(groups: set[int], timeout: float, poll: float = 0.02) -> bool:
    """Wait (bounded) until no process of ``groups`` runs; whether they are all gone."""
    deadline = time.monotonic() + timeout
    while groups_alive(groups):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True
