"""Test kit: ``dispatcher serve`` pods and ``dispatch-runner`` agents as real child processes.

Each child writes its output to a log file in the test's directory, runs in a session of its own
(a signal meant for one pod reaches no other process) and is ended by pid: ``Children.close``
sends SIGKILL to the process group of every child still alive, so nothing outlives the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dispatcher.settings import Settings
from runner.config import TOKEN_ENV

# Short server-side timings: a pod's record expires soon after a kill; the lease (10 s) is far
# longer than a switch to another pod takes, so a job that re-attaches never loses it.
POD_ENV = {
    "DISPATCHER_RECONCILE_INTERVAL": "0.2",
    "DISPATCHER_POD_TTL": "3",
    "DISPATCHER_HEARTBEAT_INTERVAL": "1",
    "DISPATCHER_LEASE_TIMEOUT": "10",
    "DISPATCHER_CONNECT_RATE": "600",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(name: str) -> list[str]:
    """The console script of this environment, or ``python -m`` where it is not installed."""
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", {"dispatch-runner": "runner"}.get(name, name)]


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns a truthy value; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def exited(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def logged(self, text: str, timeout: float = 30.0) -> None:
        await eventually(lambda: text in self.log(), timeout, f"{text!r} in {self.log_path}")

    def kill_group(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


@dataclass
class PodProcess(Child):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, timeout: float = 30.0) -> None:
        """Until ``/readyz`` answers 200; a pod that exits meanwhile fails at once."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                if not self.alive():
                    raise AssertionError(f"{self.name} exited:\n{self.log()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(self.url + "/readyz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} not ready in {timeout:g} s")
                await asyncio.sleep(0.1)


@dataclass
class Children:
    """Every child of one test, in the test's directory."""

    settings: Settings
    tmp: Path
    started: list[Child] = field(default_factory=list)

    def _environ(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH")}

    async def pod(self, port: int = 0) -> PodProcess:
        """A ``dispatcher serve`` on ``port`` (0: a free one), ready; the same port again is a
        restart of that pod."""
        port = port or free_port()
        env = {
            **self._environ(),
            **POD_ENV,
            "DISPATCHER_REDIS_URL": self.settings.redis_url,
            "DISPATCHER_NAMESPACE": self.settings.namespace,
        }
        argv = [*command("dispatcher"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        pod = PodProcess(f"pod-{port}", argv, env, self.tmp / f"pod-{port}.log", port=port)
        await pod.start()
        self.started.append(pod)
        await pod.ready()
        return pod

    async def agent(self, urls: list[str], runner: str, token: str, *extra: str) -> Child:
        """A ``dispatch-runner`` given every URL of ``urls`` (one ``--url`` each)."""
        env = {**self._environ(), TOKEN_ENV: token}
        argv = [*command("dispatch-runner"), "--runner", runner]
        for url in urls:
            argv += ["--url", url]
        argv += ["--state-dir", str(self.tmp / "state"), "--kill-grace", "0.5", *extra]
        agent = Child(f"agent-{runner}", argv, env, self.tmp / f"agent-{runner}.log")
        await agent.start()
        self.started.append(agent)
        return agent

    async def close(self) -> None:
        """Agents first (SIGTERM: they stop their jobs), then SIGKILL to every group left."""
        for child in self.started:
            if not isinstance(child, PodProcess):
                child.signal(signal.SIGTERM)
        for child in self.started:
            if not isinstance(child, PodProcess) and child.alive():
                with contextlib.suppress(TimeoutError):
                    await child.exited(10)
        for child in self.started:
            if child.alive():  # by pid, and only a process of ours that is still there
                child.kill_group()
                with contextlib.suppress(TimeoutError):
                    await child.exited(10)
