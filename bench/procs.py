"""Child processes of the harness: start them, talk to them, and end them (only them).

Every process the harness starts is recorded here with its pid, its stderr goes to a log file in
the run's work directory, and ``stop`` ends it (SIGTERM, then SIGKILL) together with the processes
it started itself (rq's scheduler), found by pid before the parent is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import deps

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1


class ChildFailed(RuntimeError):
    """A child process exited or misbehaved; the message ends with the tail of its log."""


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the harness dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    config: Path | None = None  # the JSON config of a bench.sim / bench.producer child
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def failure(self, what: str) -> ChildFailed:
        return ChildFailed(
            f"{self.name} (pid {self.pid}): {what}\n--- {self.log} ---\n{tail(self.log)}"
        )

    async def event(self, name: str, timeout: float) -> dict[str, Any]:
        """Read stdout lines until the event ``name``; raise if the child exits or times out."""
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise self.failure(f"no '{name}' within {timeout:.0f} s")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                raise self.failure(f"no '{name}' within {timeout:.0f} s") from None
            if not line:
                await self.proc.wait()
                raise self.failure(f"exited with status {self.proc.returncode} before '{name}'")
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("event") == name:
                    return message

    async def command(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word.encode() + b"\n")
        await self.proc.stdin.drain()


@dataclass
class Procs:
    """Every child of this harness run."""

    work_dir: Path
    children: list[Child] = field(default_factory=list)
    _seq: int = 0

    async def spawn(
        self, name: str, args: list[str], env: dict[str, str], *, pipes: bool = False
    ) -> Child:
        self._seq += 1
        log = self.work_dir / f"{self._seq:03d}-{name}.log"
        full_env = {
            **os.environ,
            **env,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *args,
                preexec_fn=_die_with_parent,
                cwd=ROOT,
                env=full_env,
                stderr=stderr,
                stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
                limit=1 << 20,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    async def python(
        self, name: str, module: str, *args: str, env: dict[str, str], pipes: bool = False
    ) -> Child:
        return await self.spawn(name, [sys.executable, "-m", module, *args], env, pipes=pipes)

    async def stop(
        self, child: Child, timeout: float = 15.0, sig: int = signal.SIGTERM
    ) -> int | None:
        """End ``child`` (and what it started): ``sig``, then SIGKILL after ``timeout``."""
        if child.stopped:
            return child.proc.returncode
        child.stopped = True
        psutil = deps.psutil()
        try:
            descendants = psutil.Process(child.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        if child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(sig)
            try:
                await asyncio.wait_for(child.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()
        for proc in descendants:  # only processes our child started
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    proc.terminate()
        if descendants:
            _gone, alive = psutil.wait_procs(descendants, timeout=5)
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        return child.proc.returncode

    async def stop_many(self, children: list[Child], timeout: float = 15.0) -> None:
        await asyncio.gather(*(self.stop(c, timeout) for c in children))

    async def stop_all(self) -> None:
        await self.stop_many([c for c in reversed(self.children) if not c.stopped], 10.0)


async def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    """The status code of ``GET path`` on 127.0.0.1:port (0 when nothing answers)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError):
        return 0
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    except (OSError, TimeoutError):
        return 0
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
