"""The asyncio driver: runs a ``RunnerMachine`` against a real WebSocket, subprocesses and disk.

Theory of operation: one loop feeds the machine one input at a time and performs the effects it
returns, in order. Inputs come from a single queue: the connect-and-read task of the current
connection, the job task, signals (``request_shutdown``), and ``Tick`` when the machine's
``next_deadline()`` passes; the driver owns every timer, the machine only names deadlines. Each
connection has a generation number; when the machine closes or abandons a connection, the
generation moves on and anything that connection still reports is dropped, so the machine never
hears about a connection it already counted as gone.

Shutdown (signals, or the ``stop`` event given to ``run``): the first request takes no new job, lets
the running job finish (stopped and reported ``failed`` at ``drain_timeout``), delivers the result
and exits 0. A second request exits at once with status 1: the job's process group is killed, and
the spool keeps any undelivered result for the next start.

Start: before the first connection, a job that a previous life of the agent left running (its
process group is in the spool) is killed and waited for, so no job runs beside the next one; the
``ready`` that follows ends that attempt at the dispatcher (PROTOCOL.md rule 1).

Token refused (HTTP 401, or 403 from a server that cannot send 401): what a fleet operator expects
is a loud, clear error and no crash loop hammering the dispatcher, yet no lost work when a token is
rotated under a running agent. So each refusal is logged at ERROR ("token refused"), retried with
the capped back-off, and after ``max_auth_failures`` refusals in a row (default 10, several minutes)
while no job runs the agent exits with status 3, leaving any held result in the spool. A job that
is running is never abandoned for this: the agent keeps trying until the job has ended. HTTP 429
waits at least the ``Retry-After`` the dispatcher sent.

Several dispatcher URLs: a ``Failover`` (``runner.failover``) picks the URL of each connection
attempt and is the machine's source of reconnect delays. It sees every input the machine sees, with
the same time, just before the machine does, so when the machine asks for a delay the policy
already knows how the attempt or the session ended. Re-attaching after a reconnect (``running``)
works the same on any URL: the job's record is in the shared Redis, not in a pod.

Exit status: 0 after a normal shutdown, 1 after a forced one, 3 after repeated token refusals;
with ``once`` (``dispatch-runner --once``) 0 once the one job's result is acknowledged, or 4 when
that job could not run (``runner.machine.once_exit_code``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import platform
import socket
import time
from collections.abc import Coroutine
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from dispatch_protocol.messages import Job, Log, RunnerInfo, RunnerMessage, Terminal, encode
from runner import __version__
from runner.backoff import Backoff
from runner.channel import connect_failure, open_channel, read_messages
from runner.config import AgentConfig
from runner.events import (
    CancelJob,
    Close,
    Connect,
    Connected,
    ConnectionLost,
    DropPersisted,
    Effect,
    Exit,
    Input,
    JobFinished,
    JobOutcome,
    PersistResult,
    Send,
    ShutdownRequested,
    StartJob,
    Tick,
)
from runner.executor import Executor, ExecutorConfig
from runner.failover import Failover
from runner.logsend import LogSender
from runner.machine import MachineConfig, RunnerMachine
from runner.procgroup import ProcessGroup, stop_group
from runner.spool import CurrentJob, Spool
from runner.states import LocalProtocolError, RemoteProtocolError, State

log = logging.getLogger(__name__)

TEARDOWN_TIMEOUT = 5.0  # how long exiting waits for sockets to close and the job to be killed


def runner_info() -> RunnerInfo:
    """What this runner reports about itself in ``ready``."""
    return RunnerInfo(
        version=__version__,
        os=platform.system().lower(),
        arch=platform.machine(),
        hostname=socket.gethostname(),
    )


class Agent:
    """The runner agent. ``await Agent(config).run(stop)`` returns the exit status."""

    def __init__(self, config: AgentConfig, *, backoff: Backoff | None = None) -> None:
        self.config = config
        self._failover = Failover(
            config.channel_urls, backoff or Backoff(), healthy_after=config.healthy_session
        )
        self._machine: RunnerMachine | None = None
        self._inbox: asyncio.Queue[tuple[int | None, Input]] = asyncio.Queue()
        self._spool = Spool(config.spool_dir)
        self._executor = Executor(
            ExecutorConfig(
                work_dir=config.job_dir,
                kill_grace=config.kill_grace,
                output_cap=config.output_cap,
                base_env=config.base_env,
                job_user=config.job_user,
            )
        )
        self._ws: ClientConnection | None = None
        self._generation = 0  # of the current connection; older ones are ignored
        self._background: set[asyncio.Task[None]] = set()  # cancelled on exit
        self._closing: set[asyncio.Task[None]] = set()  # closing handshakes, awaited on exit
        self._job_task: asyncio.Task[None] | None = None
        self._job_cancel = asyncio.Event()

    @property
    def state(self) -> State:
        """The protocol state (``DISCONNECTED`` before ``run``)."""
        return self._machine.state if self._machine else State.DISCONNECTED

    def request_shutdown(self) -> None:
        """Ask the agent to stop: the first call drains, a second one stops at once."""
        self._inbox.put_nowait((None, ShutdownRequested()))

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Run until shutdown; setting ``stop`` is the same as one ``request_shutdown()``.

        Raises ``SpoolLocked`` if another agent uses the same state directory and runner name,
        ``WorkDirError`` if the job user cannot reach the work directory, ``GroupSurvived`` if the
        processes of a job from an earlier life cannot be killed.
        """
        with self._spool:
            self._executor.prepare()
            held = await self._recover()
            machine = RunnerMachine(self._machine_config(), backoff=self._failover, held=held)
            self._machine = machine
            if stop is not None:
                self._spawn(self._forward(stop), self._background)
            try:
                return await self._loop(machine)
            finally:
                await self._teardown()

    # -- the loop ---------------------------------------------------------------------------------

    async def _loop(self, machine: RunnerMachine) -> int:
        effects = machine.start()
        while True:
            for effect in effects:
                code = await self._perform(effect)
                if code is not None:
                    return code
            effects = self._feed(machine, await self._next_input(machine))

    async def _next_input(self, machine: RunnerMachine) -> Input:
        while True:
            deadline = machine.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._now())
            try:
                async with asyncio.timeout(timeout):
                    generation, event = await self._inbox.get()
            except TimeoutError:
                return Tick()
            if generation is None or generation == self._generation:
                return event
            log.debug("ignoring %r from an abandoned connection", event)

    def _feed(self, machine: RunnerMachine, event: Input) -> list[Effect]:
        now = self._now()
        try:
            return self._handle(machine, event, now)
        except RemoteProtocolError as exc:
            log.error("%s; closing the connection", exc)
            self._close(exc.close_code or 1008, "message not allowed now")
            return self._handle(machine, ConnectionLost(reason=str(exc)), now)
        except LocalProtocolError:
            log.exception("ignored an impossible input (a bug in dispatch-runner)")
            return []

    def _handle(self, machine: RunnerMachine, event: Input, now: float) -> list[Effect]:
        self._failover.observe(event, now)  # first: the machine may ask it for a delay
        return machine.handle(event, now)

    async def _perform(self, effect: Effect) -> int | None:
        match effect:
            case Connect():
                self._generation += 1
                self._spawn(self._connect(self._generation), self._background)
            case Send(message=message):
                await self._send(message)
            case Close(code=code, reason=reason):
                self._close(code, reason)
            case StartJob(job=job):
                self._start_job(job)
            case CancelJob(reason=reason):
                log.info("stopping the job: %s", reason)
                self._job_cancel.set()
            case PersistResult(message=message):
                await asyncio.to_thread(self._persist, message)
            case DropPersisted(job=job, acknowledged=acknowledged):
                await asyncio.to_thread(self._spool.remove_result)
                if acknowledged:  # only now: whoever reads this may rely on the spool being empty
                    log.info("result of job %s acknowledged", job)
            case Exit(code=code):
                log.info("exiting with status %d", code)
                return code
        return None

    # -- effects ----------------------------------------------------------------------------------

    async def _connect(self, generation: int) -> None:
        """Open the channel, report the outcome, then feed its messages until it ends."""

        def put(event: Input) -> None:
            self._inbox.put_nowait((generation, event))

        url = self._failover.url
        try:
            ws = await open_channel(url, self.config.token, open_timeout=self.config.open_timeout)
        except Exception as exc:  # every failure is an input: nothing may stop the agent here
            failure = connect_failure(exc, time.time())
            put(dataclasses.replace(failure, error=f"{failure.error} at {url}"))
            return
        if generation != self._generation:  # abandoned while connecting (shutdown)
            await ws.close(1001, "runner shutting down")
            return
        self._ws = ws
        log.info("connected to %s", url)
        put(Connected())
        await read_messages(ws, put)

    async def _send(self, message: RunnerMessage) -> None:
        if self._ws is None:
            log.error("no connection to send %s on", type(message).__name__)
            return
        with contextlib.suppress(ConnectionClosed):  # the reading side reports it, with the code
            await self._ws.send(encode(message))

    def _close(self, code: int, reason: str) -> None:
        ws, self._ws = self._ws, None
        self._generation += 1  # whatever that connection still reports is stale now
        if ws is not None:
            self._spawn(ws.close(code, reason), self._closing)

    def _start_job(self, job: Job) -> None:
        self._spool.record_current(job)
        self._job_cancel = cancel = asyncio.Event()
        self._job_task = asyncio.create_task(self._run_job(job, cancel))

    async def _run_job(self, job: Job, cancel: asyncio.Event) -> None:
        def record_group(group: ProcessGroup) -> None:
            self._spool.record_current(job, group)

        live = LogSender(job.job, job.attempt, self._send_log)  # protocol 1.1 `log`
        live.start()
        try:
            outcome = await self._executor.run(
                job, cancel, on_start=record_group, on_output=live.output
            )
        except asyncio.CancelledError:
            await live.cancel()
            raise
        except Exception as exc:  # the executor should not raise; if it does, report, not crash
            log.exception("the executor failed on job %s", job.job)
            outcome = JobOutcome(error=f"runner error: {exc}")
        await live.close()  # the last chunks go out before the terminal message
        self._inbox.put_nowait((None, JobFinished(outcome)))

    async def _send_log(self, message: Log) -> None:
        if self._ws is not None:  # best effort: while disconnected the live log is lost
            await self._send(message)

    def _persist(self, message: Terminal) -> None:
        self._spool.save_result(message)
        self._spool.clear_current()

    # -- lifecycle --------------------------------------------------------------------------------

    async def _recover(self) -> Terminal | None:
        """Deal with what a previous agent left: kill its job's processes (before anything else
        happens), report the lost attempt in the log, remove its work directories."""
        held = self._spool.load_result()
        current = self._spool.load_current()
        if current is not None:
            await self._kill_leftovers(current)
            if held is None or held.job != current.job:
                log.warning(
                    "job %s attempt %d was running when the agent stopped; no process of it is "
                    "left; it cannot be resumed, the dispatcher ends that attempt",
                    current.job,
                    current.attempt,
                )
        self._spool.clear_current()
        if held is not None:
            log.info("the unacknowledged result of job %s will be sent first", held.job)
        if removed := self._executor.remove_stale_work_dirs():
            log.info("removed %d work directories left by a previous agent", removed)
        return held

    async def _kill_leftovers(self, current: CurrentJob) -> None:
        """SIGTERM, SIGKILL, and wait until they are gone (raises ``GroupSurvived``)."""
        if current.group is None:
            return  # the agent died before the job's command could start: the gate never opened
        killed = await stop_group(current.group, self.config.kill_grace)
        if killed:
            log.warning(
                "killed processes %s of job %s attempt %d, left by the previous agent",
                killed,
                current.job,
                current.attempt,
            )

    def _machine_config(self) -> MachineConfig:
        cfg = self.config
        return MachineConfig(
            poll_timeout=cfg.poll_timeout,
            runner_info=runner_info(),
            poll_margin=cfg.poll_margin,
            ack_timeout=cfg.ack_timeout,
            drain_timeout=cfg.drain_timeout,
            max_auth_failures=cfg.max_auth_failures,
            once=cfg.once,
        )

    async def _forward(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.request_shutdown()

    async def _teardown(self) -> None:
        """Leave nothing behind: the job's processes, the socket, background tasks."""
        self._close(1001, "runner shutting down")
        cancel = list(self._background)
        if self._job_task is not None and not self._job_task.done():
            log.warning("killing the running job")
            cancel.append(self._job_task)  # the executor kills the job's process group
        for task in cancel:
            task.cancel()
        pending = [*cancel, *self._closing]
        if pending:
            await asyncio.wait(pending, timeout=TEARDOWN_TIMEOUT)

    @staticmethod
    def _spawn(coro: Coroutine[Any, Any, None], group: set[asyncio.Task[None]]) -> None:
        task = asyncio.create_task(coro)
        group.add(task)  # a reference, so the task is not garbage-collected mid-flight
        task.add_done_callback(group.discard)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()
