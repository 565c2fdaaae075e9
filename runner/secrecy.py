"""Keeping the runner token out of what other processes can read about the agent (Linux).

Why: popping the token from ``os.environ`` changes Python's copy and libc's ``environ`` array, not
the memory ``/proc/PID/environ`` reads (the strings the kernel put on the stack at exec), and
overwriting ``sys.argv`` does not change ``/proc/PID/cmdline``. So:

- ``scrub_memory`` overwrites the token with asterisks in those two areas of the agent's own
  memory, found through ``arg_start``..``arg_end`` and ``env_start``..``env_end`` (fields 48 to
  51 of ``/proc/self/stat``) and written through ``/proc/self/mem``. ``cmdline`` is readable by
  every user of the host; ``environ`` by the agent's user and root;
- ``make_undumpable`` sets ``PR_SET_DUMPABLE`` to 0: ``/proc/PID/environ``, ``mem``, ``maps`` and
  ``fd`` then belong to root, ``ptrace`` is refused to other processes of the same user and no core
  dump is written. The token remains in the agent's heap, where only root can reach it then.

Order matters: once undumpable, a non-root agent can no longer open its own ``/proc/self/mem``, so
the scrub comes first. A job's process is dumpable again after its ``exec``, which is fine: it holds
nothing secret.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from io import FileIO
from pathlib import Path

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
# Indexes into the fields after the command name of /proc/self/stat (field 3 is index 0).
_ARG_START, _ARG_END, _ENV_START, _ENV_END = 45, 46, 47, 48


def memory_areas(stat_line: str) -> list[tuple[int, int]]:
    """The (start, end) of the argument and the environment areas named in a stat line."""
    fields = stat_line.rsplit(")", 1)[1].split()
    return [
        (int(fields[_ARG_START]), int(fields[_ARG_END])),
        (int(fields[_ENV_START]), int(fields[_ENV_END])),
    ]


def scrub_memory(secret: str) -> bool:
    """Overwrite ``secret`` in this process's original argv and environment memory.

    Returns whether both areas could be read and rewritten (False off Linux).
    """
    needle = secret.encode()
    if not needle:
        return True
    try:
        areas = memory_areas(Path("/proc/self/stat").read_text())
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            for start, end in areas:
                _overwrite(mem, start, end, needle)
    except (OSError, ValueError, IndexError):
        return False
    return True


def _overwrite(mem: FileIO, start: int, end: int, needle: bytes) -> None:
    mem.seek(start)
    area = mem.read(end - start)
    offset = area.find(needle)
    while offset >= 0:
        mem.seek(start + offset)
        mem.write(b"*" * len(needle))
        offset = area.find(needle, offset + len(needle))


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)``; returns whether the process is now undumpable."""
    libc = _libc()
    if libc is None:
        return False
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return False
    return bool(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
