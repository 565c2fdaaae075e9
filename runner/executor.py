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

The group is recorded before the job's command runs: the command is started behind a gate, a
``/bin/sh`` that waits for one line on its stdin, which the executor writes only after ``on_start``
(the spool) has the group; then the shell execs the command with stdin from /dev/null. If the agent
dies before that, the gate reads end-of-file and exits without running anything.

With a ``job_user`` the child switches to that user (groups, gid, uid) before exec, and the work
directory belongs to it. Output files are read without following symbolic links out of the work
directory, since the agent (root then) must not read files for the job that the job cannot.

A bad payload or a command that cannot start is a failed job, never an agent crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from dispatch_protocol.messages import Job, LogStream
from runner.events import JobOutcome
from runner.jobuser import JobUser, job_environment, reach_problem
from runner.procgroup import ProcessGroup, describe

DEFAULT_OUTPUT_CAP = 1 << 20  # 1 MiB for each of stdout and stderr, and for each output file
DEFAULT_KILL_GRACE = 10.0
WORK_DIR_PREFIX = "job-"
_READ_CHUNK = 1 << 16

Ending = Literal["exited", "timeout", "canceled"]
OnStart = Callable[[ProcessGroup], None]  # records the group durably; may raise OSError
OnOutput = Callable[[LogStream, bytes], None]  # live output, as it is read

# $0 is a label; "$@" is the job's argv. Exit 125 (nothing ran) if the gate is never opened.
GATE_SCRIPT = 'read -r go || exit 125; exec </dev/null; exec "$@"'


class PayloadError(ValueError):
    """The payload does not describe a runnable job."""


@dataclass(frozen=True)
class ExecutorConfig:
    work_dir: Path  # base directory; each job gets a fresh subdirectory
    kill_grace: float = DEFAULT_KILL_GRACE  # SIGTERM -> SIGKILL delay
    output_cap: int = DEFAULT_OUTPUT_CAP
    base_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    pipe_grace: float = 2.0  # after the job ends, how long to wait for its pipes to close
    job_user: JobUser | None = None  # run jobs as this user (the agent is root)


class WorkDirError(RuntimeError):
    """The base work directory cannot be used for the jobs (one line for the operator)."""


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

    def prepare(self) -> None:
        """Create the base work directory; with a job user, make sure that user can reach it."""
        base, user = self._cfg.work_dir, self._cfg.job_user
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        if user is None:
            return
        problem = reach_problem(base, user)
        if problem is not None:
            raise WorkDirError(problem)

    def remove_stale_work_dirs(self) -> int:
        """Delete work directories left by an agent that died mid-job; returns how many.

        Call it only once no process of an earlier job can be running (``procgroup``)."""
        base = self._cfg.work_dir
        stale = [p for p in base.glob(f"{WORK_DIR_PREFIX}*") if p.is_dir()] if base.is_dir() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    async def run(
        self,
        job: Job,
        cancel: asyncio.Event,
        on_start: OnStart | None = None,
        on_output: OnOutput | None = None,
    ) -> JobOutcome:
        """Run ``job`` to its end; setting ``cancel`` stops it. Cancelling the task kills it.

        ``on_start`` gets the job's process group before the job's command runs; ``on_output``
        every read from its stdout and stderr as it happens (the live log)."""
        try:
            payload = parse_payload(job.payload)
        except PayloadError as exc:
            return JobOutcome(error=str(exc))
        self._cfg.work_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"{WORK_DIR_PREFIX}{job.job[:8]}-"
        work = Path(tempfile.mkdtemp(prefix=prefix, dir=self._cfg.work_dir))
        try:
            cwd = self._make_dirs(work, payload.cwd)
            env = self._environment(work, job, payload)
            missing = _missing_command(payload.argv[0], cwd, env)
            if missing is not None:
                return JobOutcome(error=f"cannot start the job: {missing}")
            try:
                proc = await self._spawn(cwd, env, payload)
            except OSError as exc:
                return JobOutcome(error=f"cannot start the job: {exc}")
            problem = await _open_gate(proc, on_start)
            if problem is not None:
                return JobOutcome(error=problem)
            return await self._supervise(proc, work, job, payload, cancel, on_output)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)

    def _make_dirs(self, work: Path, relative: str | None) -> Path:
        """The work directory and the payload's ``cwd`` in it, owned by the job user if any."""
        user, path = self._cfg.job_user, work
        for part in [None, *PurePosixPath(relative or ".").parts]:
            if part is not None:
                path = path / part
                path.mkdir(exist_ok=True)
            if user is not None:
                os.chown(path, user.uid, user.gid)
        return path

    def _environment(self, work: Path, job: Job, payload: Payload) -> dict[str, str]:
        env = {**self._cfg.base_env, **job_environment(self._cfg.job_user), **payload.env}
        env.update(DISPATCH_JOB_ID=job.job, DISPATCH_JOB_ATTEMPT=str(job.attempt))
        env["DISPATCH_WORK_DIR"] = str(work)
        return env

    async def _spawn(
        self, cwd: Path, env: dict[str, str], payload: Payload
    ) -> asyncio.subprocess.Process:
        user = self._cfg.job_user
        switch: dict[str, Any] = {}
        if user is not None:
            switch = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
        return await asyncio.create_subprocess_exec(
            *("/bin/sh", "-c", GATE_SCRIPT, "dispatch-job", *payload.argv),
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE,  # the gate; then /dev/null
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: we can signal the whole job
            **switch,
        )

    async def _supervise(
        self,
        proc: asyncio.subprocess.Process,
        work: Path,
        job: Job,
        payload: Payload,
        cancel: asyncio.Event,
        on_output: OnOutput | None = None,
    ) -> JobOutcome:
        out, err = TailBuffer(self._cfg.output_cap), TailBuffer(self._cfg.output_cap)
        assert proc.stdout is not None and proc.stderr is not None
        streams: list[tuple[asyncio.StreamReader, TailBuffer, LogStream]] = [
            (proc.stdout, out, "stdout"),
            (proc.stderr, err, "stderr"),
        ]
        pumps = [
            asyncio.create_task(_pump(stream, sink, name, on_output))
            for stream, sink, name in streams
        ]
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
        return {path: _read_capped(work, path, self._cfg.output_cap) for path in paths}


async def _open_gate(proc: asyncio.subprocess.Process, on_start: OnStart | None) -> str | None:
    """Record the job's group, then let its command run; an error text if it could not be
    recorded (the command never ran). Cancelled meanwhile, the gate is killed, unopened."""
    try:
        if on_start is not None:
            on_start(describe(proc.pid))
    except OSError as exc:
        _signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()
        return f"cannot record the job's process group: {exc}"
    except BaseException:
        _signal_group(proc.pid, signal.SIGKILL)
        raise
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    with contextlib.suppress(ConnectionError):  # the gate died: its exit status tells
        await proc.stdin.drain()
    proc.stdin.close()
    return None


def _missing_command(command: str, cwd: Path, env: Mapping[str, str]) -> str | None:
    """Why ``command`` cannot be executed, as execvp would find it, or None."""
    if "/" in command:
        found: str | None = str(cwd / command)
        if not (os.path.isfile(str(found)) and os.access(str(found), os.X_OK)):
            found = None
    else:
        found = shutil.which(command, path=env.get("PATH", os.defpath))
    return None if found else f"{command}: command not found or not executable"


async def _pump(
    stream: asyncio.StreamReader,
    sink: TailBuffer,
    name: LogStream = "stdout",
    on_output: OnOutput | None = None,
) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        sink.feed(chunk)
        if on_output is not None:
            on_output(name, chunk)


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


def _read_capped(work: Path, relative: str, cap: int) -> str | None:
    """The head of an output file; None if it is missing, not a regular file, or a link out of
    the work directory."""
    try:
        path = (work / relative).resolve(strict=True)
        if not path.is_relative_to(work.resolve()):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (OSError, RuntimeError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # a directory, a FIFO (which would block), a device
        with open(fd, "rb", closefd=False) as f:
            return f.read(cap).decode("utf-8", errors="replace")
    finally:
        os.close(fd)
