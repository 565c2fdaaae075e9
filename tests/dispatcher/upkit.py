"""`dispatcher up` as a real process for tests: its console read by a thread, waited on by pattern.

``UpProcess.expect`` waits (with a generous bound) for a console line matching a pattern; the end of
the output fails at once instead of waiting out the bound. ``close`` always leaves nothing behind:
SIGINT, a bounded wait, then SIGKILL to `up` and to every process group below it.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dispatcher import proctree
from dispatcher.up import free_port


def clean_env() -> dict[str, str]:
    """The environment without DISPATCHER_* settings: each test says what `up` uses."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}


class UpProcess:
    def __init__(self, data: Path, *extra: str, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        argv = [sys.executable, "-m", "dispatcher", "up", "--port", str(self.port)]
        if shutil.which("setpriv"):  # if pytest itself is killed, `up` still stops its children
            argv = ["setpriv", "--pdeathsig", "TERM", "--", *argv]
        self.proc = subprocess.Popen(
            [*argv, "--data-dir", str(data), *extra],
            cwd=data.parent,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first console line from here on that matches ``pattern`` (a regex)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{pattern!r} not seen in {timeout:.0f}s:\n{self.output()}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)  # stays at the end for later calls
                raise AssertionError(f"output ended before {pattern!r}:\n{self.output()}")
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def output(self) -> str:
        """Every line seen so far, including those no ``expect`` has read yet."""
        unread: list[str | None] = []
        while not self._queue.empty():
            unread.append(self._queue.get_nowait())
        for line in unread:
            self._queue.put(line)  # still there for a later ``expect``
        return "\n".join([*self.lines, *(line for line in unread if line is not None)])

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C: SIGINT, then wait for `up` to exit (and for its last lines); its exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"`up` still running {timeout:.0f}s after Ctrl-C:\n{self.output()}"
            ) from None
        self._reader.join(5)  # every line it printed is in ``lines`` (for assertion messages)
        return code

    def close(self) -> None:
        """Make sure `up` and everything it started are gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                groups = proctree.descendant_groups(self.proc.pid)
                self.proc.kill()
                proctree.kill_groups(groups)
                self.proc.wait()
        self._reader.join(10)
        while True:  # keep what was printed, for assertion messages
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)

    def __enter__(self) -> UpProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` is gone, or goes within ``timeout`` (a SIGKILL takes effect shortly after
    it is sent, and only the killed process's parent can wait for it)."""
    deadline = time.monotonic() + timeout
    while proctree.alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
