"""Runs one job as a subprocess and reports a ``JobOutcome``.

The job's ``payload`` (the producer's JSON object) says what to run:

- ``command``: argv list, run directly; or ``script``: shell text, run by ``/bin/sh -c``;
- ``env``: object of strings merged over the agent's environment (the runner token is never in
  it); ``DISPATCH_JOB_ID``, ``DISPATCH_JOB_ATTEMPT`` and ``DISPATCH_WORK_DIR`` are always set;
- ``cwd``: directory relative to the job's work directory (created if missing);
- ``outputs``: paths relative to the work directory, read back into ``results`` as
  ``{path: text, or null if missing}`` (each capped; the head is kept, since it is data).

Each job gets a fresh work directory under the base directory, removed afterwards. The job runs in
its own session (``start_new_session``), so its process group is the job: a timeout or a cancel
sends SIGTERM to the whole group, then SIGKILL after the grace period, and leftover background
processes are killed when the main process exits. stdout and stderr keep their last ``output_cap``
bytes (the tail is where the error is), with a one-line note of how much was cut.

A bad payload or a command that cannot start is a failed job, never an agent crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from dispatcher.messages import Job
from runner.events import JobOutcome

DEFAULT_OUTPUT_CAP = 1 << 20  # 1 MiB for each of stdout and stderr, and for each output file
DEFAULT_KILL_GRACE = 10.0
WORK_DIR_PREFIX = "job-"
_READ_CHUNK = 1 << 16

Ending = Literal["exited", "timeout", "canceled"]


class PayloadError(ValueError):
    """The payload does not describe a runnable job."""


@dataclass(frozen=True)
class ExecutorConfig:
    work_dir: Path  # base directory; each job gets a fresh subdirectory
    kill_grace: float = DEFAULT_KILL_GRACE  # SIGTERM -> SIGKILL delay
    output_cap: int = DEFAULT_OUTPUT_CAP
    base_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    pipe_grace: float = 2.0  # after the job ends, how long to wait for its pipes to close


@dataclass(frozen=True)
class Payload:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    outputs: list[str]


def parse_payload(raw: Any) -> Payload:
    """Validate the producer's payload; raises ``PayloadError`` with a message for the producer."""
    if not isinstance(raw, dict):
        raise PayloadError("payload must be a JSON object with 'command' or 'script'")
    command, script = raw.get("command"), raw.get("script")
    if command is not None and script is not None:
        raise PayloadError("payload has both 'command' and 'script'; give one")
    if command is not None:
        if not _is_str_list(command) or not command:
            raise PayloadError("payload 'command' must be a non-empty list of strings")
        argv = list(command)
    elif isinstance(script, str):
        argv = ["/bin/sh", "-c", script]
    else:
        raise PayloadError("payload has neither 'command' (list) nor 'script' (string)")
    env = raw.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise PayloadError("payload 'env' must be an object of strings")
    cwd = raw.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise PayloadError("payload 'cwd' must be a string")
    outputs = raw.get("outputs") or []
    if not _is_str_list(outputs):
        raise PayloadError("payload 'outputs' must be a list of strings")
    for path in [*([cwd] if cwd else []), *outputs]:
        _check_relative(path)
    return Payload(argv=argv, env=dict(env), cwd=cwd, outputs=list(outputs))


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_relative(path: str) -> None:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise PayloadError(f"path {path!r} must be relative to the work directory, without '..'")


class TailBuffer:
    """Keeps the last ``cap`` bytes written to it and counts what it dropped."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._buf = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        self._buf += data
        excess = len(self._buf) - self._cap
        if excess > 0:
            del self._buf[:excess]
            self.dropped += excess

    def text(self) -> str:
        body = self._buf.decode("utf-8", errors="replace")
        return f"[{self.dropped} bytes cut]\n{body}" if self.dropped else body


class Executor:
    """Runs jobs; one ``run`` call per job."""

    def __init__(self, config: ExecutorConfig) -> None:
        self._cfg = config

    def remove_stale_work_dirs(self) -> int:
        """Delete work directories left by an agent that died mid-job; returns how many."""
        base = self._cfg.work_dir
        stale = [p for p in base.glob(f"{WORK_DIR_PREFIX}*") if p.is_dir()] if base.is_dir() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    async def run(self, job: Job, cancel: asyncio.Event) -> JobOutcome:
        """Run ``job`` to its end; setting ``cancel`` stops it. Cancelling the task kills it."""
        try:
            payload = parse_payload(job.payload)
        except PayloadError as exc:
            return JobOutcome(error=str(exc))
        self._cfg.work_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"{WORK_DIR_PREFIX}{job.job[:8]}-"
        work = Path(tempfile.mkdtemp(prefix=prefix, dir=self._cfg.work_dir))
        try:
            try:
                proc = await self._spawn(work, job, payload)
            except OSError as exc:
                return JobOutcome(error=f"cannot start the job: {exc}")
            return await self._supervise(proc, work, job, payload, cancel)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)

    async def _spawn(self, work: Path, job: Job, payload: Payload) -> asyncio.subprocess.Process:
        cwd = work / payload.cwd if payload.cwd else work
        cwd.mkdir(parents=True, exist_ok=True)
        env = {**self._cfg.base_env, **payload.env}
        env.update(DISPATCH_JOB_ID=job.job, DISPATCH_JOB_ATTEMPT=str(job.attempt))
        env["DISPATCH_WORK_DIR"] = str(work)
        return await asyncio.create_subprocess_exec(
            *payload.argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: we can signal the whole job
        )

    async def _supervise(
        self,
        proc: asyncio.subprocess.Process,
        work: Path,
        job: Job,
        payload: Payload,
        cancel: asyncio.Event,
    ) -> JobOutcome:
        out, err = TailBuffer(self._cfg.output_cap), TailBuffer(self._cfg.output_cap)
        assert proc.stdout is not None and proc.stderr is not None
        streams = [(proc.stdout, out), (proc.stderr, err)]
        pumps = [asyncio.create_task(_pump(stream, sink)) for stream, sink in streams]
        try:
            ending = await _wait_for_end(proc, job.timeout, cancel)
            if ending != "exited":
                await self._stop(proc)
        finally:
            # Also on task cancellation (a second signal stops the agent): nothing may outlive it.
            _signal_group(proc.pid, signal.SIGKILL)
            await _finish_pumps(pumps, self._cfg.pipe_grace)
        return JobOutcome(
            exit_code=proc.returncode,
            error=_error(ending, proc.returncode),
            results=self._read_outputs(work, payload.outputs),
            stdout=out.text(),
            stderr=err.text(),
        )

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the job's process group, SIGKILL if it is still there after the grace."""
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._cfg.kill_grace)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    def _read_outputs(self, work: Path, paths: list[str]) -> dict[str, str | None] | None:
        if not paths:
            return None
        return {path: _read_capped(work / path, self._cfg.output_cap) for path in paths}


async def _pump(stream: asyncio.StreamReader, sink: TailBuffer) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        sink.feed(chunk)


async def _finish_pumps(pumps: list[asyncio.Task[None]], grace: float) -> None:
    """Let the readers drain; a process that escaped the group may hold a pipe open for ever."""
    _, pending = await asyncio.wait(pumps, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _wait_for_end(
    proc: asyncio.subprocess.Process, timeout: float, cancel: asyncio.Event
) -> Ending:
    exited = asyncio.create_task(proc.wait())
    canceled = asyncio.create_task(cancel.wait())
    try:
        done, _ = await asyncio.wait(
            {exited, canceled},
            timeout=timeout if timeout > 0 else None,  # no positive timeout: no limit
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        exited.cancel()
        canceled.cancel()
    if exited in done:  # finishing on its own wins over a cancel that came at the same moment
        return "exited"
    return "canceled" if canceled in done else "timeout"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _error(ending: Ending, code: int | None) -> str | None:
    if ending != "exited":
        return ending  # "timeout" or "canceled"
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by signal {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return None if code == 0 else f"exit code {code}"


def _read_capped(path: Path, cap: int) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(cap).decode("utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
