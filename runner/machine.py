"""The runner side of the channel protocol (PROTOCOL.md) as a sans-I/O state machine.

Theory of operation
-------------------
``RunnerMachine`` does no I/O: no asyncio, no sockets, no clock. The driver calls
``handle(event, now)`` with an input from ``runner.events`` and the current monotonic time, and gets
back a list of effects to carry out in order. Every wait the protocol needs (back-off before a
reconnect, the long poll, the terminal ack, the next heartbeat, the drain deadline) is kept as an
absolute deadline; the driver asks ``next_deadline()`` and feeds ``Tick()`` when it passes.

The states and the inputs each one accepts are the ``TRANSITIONS`` table in ``runner.states``, next
to the ``State`` enum (h11 style). ``handle`` looks every input up there (``expect()``) before
anything changes, so an illegal input raises ``ProtocolError`` (saying whose fault it is) and leaves
the machine as it was. Each handler below then picks one of the target states the table allows.

The protocol rules this encodes (PROTOCOL.md "Rules"):

- After connecting, a held (unacknowledged) terminal result is sent first and its ack awaited before
  ``ready``; a runner whose job is still executing sends ``running`` instead (re-attach, rule 1).
- Acks are correlated by ``job`` and ``of``: only an ack of a terminal event for the held result's
  job releases it; heartbeat and running acks never do (the old system's §6.2.6 bug).
- ``cancel`` for the running job and attempt is honoured at any time; the result is ``canceled``.
- The long poll is bounded by ``poll_timeout`` plus a margin; past it the runner reconnects.
- A result is never dropped because the dispatcher is unreachable. Only when the dispatcher refuses
  it outright (close 1007/1009) is it shrunk to a bare ``failed``, then dropped if refused again.

Shutdown: the first ``ShutdownRequested`` drains (no new job; the running job may finish until the
drain deadline, then it is stopped and reported as ``failed``; its result is delivered) and exits 0.
With nothing in progress it exits at once. A second request exits at once with status 1; the spool
keeps whatever was not delivered.

One job (``MachineConfig.once``, ``dispatch-runner --once``): once the result of the first job
received is acknowledged, the channel is closed and the machine exits with ``once_exit_code``. A
token refused after that job ended (an ephemeral registration the server ended, e.g. by a cancel
that closed the channel before the result could be sent) exits 3 at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dispatch_protocol import closecodes
from dispatch_protocol.messages import (
    DEFAULT_POLL_TIMEOUT,
    Ack,
    Cancel,
    Heartbeat,
    Job,
    NoJob,
    Ready,
    RunnerInfo,
    Running,
    Terminal,
)
from runner.backoff import Backoff, Delays
from runner.events import (
    CancelJob,
    Close,
    Connect,
    Connected,
    ConnectFailed,
    ConnectionLost,
    DropPersisted,
    Effect,
    Exit,
    Input,
    JobFinished,
    JobOutcome,
    MessageReceived,
    PersistResult,
    Send,
    ShutdownRequested,
    StartJob,
    Tick,
)
from runner.results import CancelCause, shrink_result, terminal_message
from runner.states import CONNECTED_STATES, LocalProtocolError, State, expect

log = logging.getLogger(__name__)

S = State
TERMINAL_EVENTS = frozenset({"completed", "failed", "canceled"})
REJECTED_CLOSE_CODES = closecodes.REFUSED_MESSAGE  # the dispatcher refused the message itself
SUPERSEDED_CLOSE_CODE = closecodes.SUPERSEDED
EXIT_FORCED = 1
EXIT_TOKEN_REFUSED = 3
EXIT_ONCE_NOT_RUN = 4  # --once: the one job reported no exit code (could not start, or stopped)
MAX_RETRY_AFTER = 3600.0  # a bogus Retry-After must not park a runner for days


@dataclass(frozen=True)
class MachineConfig:
    """The protocol knobs; times in seconds."""

    poll_timeout: int = DEFAULT_POLL_TIMEOUT
    runner_info: RunnerInfo | None = None
    poll_margin: float = 15.0  # extra wait for `job`/`no_job` beyond poll_timeout
    ack_timeout: float = 30.0  # wait for the ack of a terminal message, then reconnect
    drain_timeout: float = 600.0  # after the first shutdown request, stop the job at this point
    max_auth_failures: int = 10  # token refused this often in a row while idle -> exit 3
    min_heartbeat_interval: float = 0.1  # guards against a zero interval from a broken server
    once: bool = False  # take one job, deliver its result, exit (``once_exit_code``)


def once_exit_code(message: Terminal) -> int:
    """``--once``: 0 when the job's command ran to an exit code (the job's own success or failure
    is in its result), ``EXIT_ONCE_NOT_RUN`` when it could not run (bad payload, command not
    found) or was stopped before it exited (canceled, timeout, drain)."""
    return 0 if getattr(message, "exit_code", None) is not None else EXIT_ONCE_NOT_RUN


class RunnerMachine:
    """The runner's protocol state; see the module docstring."""

    def __init__(
        self,
        config: MachineConfig | None = None,
        *,
        backoff: Delays | None = None,
        held: Terminal | None = None,
    ) -> None:
        self._cfg = config or MachineConfig()
        self._backoff: Delays = backoff or Backoff()
        self._state = State.DISCONNECTED
        self._held = held  # terminal message written to the spool and not yet acknowledged
        self._job: Job | None = None  # the job whose process is running
        self._cancel: CancelCause | None = None  # why that job is being stopped
        self._drain_deadline: float | None = None  # set by the first shutdown request
        self._deadline: float | None = None  # end of the current poll or ack wait
        self._next_heartbeat: float | None = None
        self._reconnect_at: float | None = None
        self._connecting = False  # a Connect effect is outstanding
        self._auth_failures = 0
        self._once_code: int | None = None  # --once: the exit status once the result is acked
        self._out: list[Effect] = []

    @property
    def state(self) -> State:
        return self._state

    @property
    def held(self) -> Terminal | None:
        return self._held

    @property
    def job(self) -> Job | None:
        return self._job

    @property
    def draining(self) -> bool:
        return self._drain_deadline is not None

    def start(self) -> list[Effect]:
        """The first effects: connect at once."""
        if self._connecting or self._state is not State.DISCONNECTED:
            raise LocalProtocolError("start() called twice (runner's fault)")
        self._connecting = True
        return [Connect()]

    def handle(self, event: Input, now: float) -> list[Effect]:
        """Feed one input; returns the effects to carry out, in order."""
        if self._state is State.STOPPED:
            return []
        targets = expect(self._state, event)
        self._out = []
        new_state = self._dispatch(event, now)
        if new_state not in targets:  # a bug here, not in the peer: the table is the contract
            raise AssertionError(f"{self._state} -> {new_state} on {event!r} is not in the table")
        if new_state is not self._state:
            log.debug("%s -> %s", self._state.value, new_state.value)
        self._state = new_state
        return self._out

    def next_deadline(self) -> float | None:
        """When the driver should feed ``Tick`` next (``None``: only on other inputs)."""
        s = self._state
        candidates: list[float | None] = []
        if s in (S.DISCONNECTED, S.EXECUTING_OFFLINE) and not self._connecting:
            candidates.append(self._reconnect_at)
        if s in (S.RESENDING, S.AWAITING_ACK, S.POLLING):
            candidates.append(self._deadline)
        if s in (S.EXECUTING, S.DRAINING):
            candidates.append(self._next_heartbeat)
        if s in (S.DRAINING, S.EXECUTING_OFFLINE) and self._cancel is None:
            candidates.append(self._drain_deadline)
        if s is S.DISCONNECTED and self.draining:
            candidates.append(self._delivery_deadline())
        return min((c for c in candidates if c is not None), default=None)

    # -- dispatch -------------------------------------------------------------------------------

    def _dispatch(self, event: Input, now: float) -> State:
        match event:
            case Tick():
                return self._on_tick(now)
            case Connected():
                return self._on_connected(now)
            case ConnectFailed():
                return self._on_connect_failed(event, now)
            case ConnectionLost():
                return self._on_connection_lost(event, now)
            case JobFinished(outcome=outcome):
                return self._on_job_finished(outcome, now)
            case ShutdownRequested():
                return self._on_shutdown(now)
            case MessageReceived(message=Job() as job):
                return self._on_job(job, now)
            case MessageReceived(message=NoJob()):
                return self._poll(now)
            case MessageReceived(message=Ack() as ack):
                return self._on_ack(ack, now)
            case MessageReceived(message=Cancel() as cancel):
                return self._on_cancel(cancel)
        raise AssertionError(f"unhandled input {event!r}")  # expect() already vetted it

    def _on_tick(self, now: float) -> State:
        s = self._state
        if s is S.DISCONNECTED and self.draining and now >= self._delivery_deadline():
            return self._give_up_delivery()
        if s in (S.DISCONNECTED, S.EXECUTING_OFFLINE):
            if self._drain_due(now):
                self._stop_job("drain", "drain timeout")
            due = self._reconnect_at is not None and now >= self._reconnect_at
            if due and not self._connecting:
                self._connecting, self._reconnect_at = True, None
                self._emit(Connect())
            return s
        if s in (S.RESENDING, S.AWAITING_ACK, S.POLLING):
            return s if self._deadline is None or now < self._deadline else self._wait_expired(now)
        if s in (S.EXECUTING, S.DRAINING):
            if self._next_heartbeat is not None and now >= self._next_heartbeat:
                job = self._current()
                self._emit(Send(Heartbeat(job=job.job, attempt=job.attempt)))
                self._next_heartbeat = now + self._interval(job)
            if self._drain_due(now):
                return self._stop_job("drain", "drain timeout")
        return s

    def _on_connected(self, now: float) -> State:
        self._require_connecting()
        self._connecting = False
        self._backoff.reset()
        self._auth_failures = 0
        if self._state is S.EXECUTING_OFFLINE:  # re-attach: `running` instead of `ready`
            job = self._current()
            self._emit(Send(Running(job=job.job, attempt=job.attempt)))
            if self._cancel is not None:
                return S.CANCELING
            self._next_heartbeat = now + self._interval(job)
            return S.DRAINING if self.draining else S.EXECUTING
        if self._held is not None:
            log.info("re-sending the unacknowledged result of job %s", self._held.job)
            return self._send_terminal(self._held, now, S.RESENDING)
        return self._poll(now)

    def _on_connect_failed(self, event: ConnectFailed, now: float) -> State:
        self._require_connecting()
        self._connecting = False
        if not event.auth_refused:
            log.warning("cannot connect to the dispatcher: %s", event.error)
        else:
            self._auth_failures += 1
            log.error(
                "token refused by the dispatcher (%s), %d time(s) in a row: check the token "
                "and the runner name",
                event.error,
                self._auth_failures,
            )
            if self._state is S.DISCONNECTED and self._once_code is not None:
                # --once, its job done: the registration ended with it (an ephemeral runner), so
                # the result cannot be delivered any more (the server has the attempt's outcome)
                log.error("token refused after the one job: the registration has ended")
                return self._exit(EXIT_TOKEN_REFUSED)
            if self._state is S.DISCONNECTED and self._auth_failures >= self._cfg.max_auth_failures:
                log.error("giving up after %d token refusals", self._auth_failures)
                return self._exit(EXIT_TOKEN_REFUSED)
        retry_after = min(event.retry_after or 0.0, MAX_RETRY_AFTER)
        self._reconnect_later(now, minimum=retry_after)
        return self._state

    def _on_connection_lost(self, event: ConnectionLost, now: float) -> State:
        log.warning("connection lost (close code %s %s)", event.code, event.reason)
        minimum = 0.0
        if event.code == SUPERSEDED_CLOSE_CODE:
            # Another agent uses this runner name; waiting the longest delay keeps the two from
            # taking the channel from each other every second.
            log.error("superseded by another connection for this runner name: is it running twice?")
            minimum = self._backoff.cap
        self._deadline = self._next_heartbeat = None
        if self._state in (S.EXECUTING, S.DRAINING, S.CANCELING):
            self._reconnect_later(now, minimum=minimum)
            return S.EXECUTING_OFFLINE
        if self._state in (S.RESENDING, S.AWAITING_ACK) and event.code in REJECTED_CLOSE_CODES:
            self._shrink_held(event)
        return self._after_disconnect(now, minimum)

    def _on_job(self, job: Job, now: float) -> State:
        log.info("job %s attempt %d (spec %s) received", job.job, job.attempt, job.spec)
        self._job, self._cancel, self._deadline = job, None, None
        self._emit(Send(Running(job=job.job, attempt=job.attempt)))
        self._emit(StartJob(job))
        self._next_heartbeat = now + self._interval(job)
        return S.EXECUTING

    def _on_ack(self, ack: Ack, now: float) -> State:
        held = self._held
        correlated = held is not None and ack.job == held.job and ack.of in TERMINAL_EVENTS
        if self._state not in (S.RESENDING, S.AWAITING_ACK) or held is None or not correlated:
            log.debug("ack of %s for job %s: nothing waits for it", ack.of, ack.job)
            return self._state
        # "acknowledged" is logged by the driver once the spool no longer holds the result
        self._held = self._deadline = None
        self._emit(DropPersisted(held.job))
        if self._once_code is not None:  # --once: the one job's result is delivered
            self._emit(Close(1000, "one job done"))
            return self._exit(self._once_code)
        if self.draining:
            self._emit(Close(1001, "runner shutting down"))
            return self._exit(0)
        return self._poll(now)

    def _on_cancel(self, cancel: Cancel) -> State:
        job = self._job
        ours = job is not None and (cancel.job, cancel.attempt) == (job.job, job.attempt)
        if self._state in (S.EXECUTING, S.DRAINING) and ours:
            log.info("dispatcher canceled job %s (%s)", cancel.job, cancel.reason)
            return self._stop_job("server", cancel.reason)
        log.info("ignoring cancel for job %s attempt %d: not running", cancel.job, cancel.attempt)
        return self._state

    def _on_job_finished(self, outcome: JobOutcome, now: float) -> State:
        message = terminal_message(self._current(), outcome, self._cancel)
        log.info("job %s finished: %s", message.job, type(message).__name__.lower())
        self._job = self._cancel = self._next_heartbeat = None
        self._held = message
        self._emit(PersistResult(message))  # durable before it is sent
        if self._cfg.once:
            self._once_code = once_exit_code(message)
        if self._state is not S.EXECUTING_OFFLINE:
            return self._send_terminal(message, now, S.AWAITING_ACK)
        # the reconnect is already scheduled; a draining agent keeps trying to deliver the result
        # until its delivery deadline
        if self.draining and now >= self._delivery_deadline():
            return self._give_up_delivery()
        return S.DISCONNECTED

    def _on_shutdown(self, now: float) -> State:
        s = self._state
        if self.draining or s in (S.DISCONNECTED, S.POLLING):
            forced = self.draining  # the second request abandons work; the first found none
            if s in CONNECTED_STATES:
                self._emit(Close(1001, "runner shutting down"))
            return self._exit(EXIT_FORCED if forced else 0)
        self._drain_deadline = now + self._cfg.drain_timeout
        log.info("shutdown requested: taking no new job, finishing the current work")
        return S.DRAINING if s is S.EXECUTING else s

    # -- helpers --------------------------------------------------------------------------------

    def _emit(self, effect: Effect) -> None:
        self._out.append(effect)

    def _exit(self, code: int) -> State:
        self._emit(Exit(code))
        return S.STOPPED

    def _current(self) -> Job:
        if self._job is None:
            raise AssertionError(f"no job while {self._state.value}")
        return self._job

    def _require_connecting(self) -> None:
        if not self._connecting:
            raise LocalProtocolError("connection result without a Connect effect (runner's fault)")

    def _interval(self, job: Job) -> float:
        return max(job.heartbeat_interval, self._cfg.min_heartbeat_interval)

    def _drain_due(self, now: float) -> bool:
        due = self._drain_deadline is not None and now >= self._drain_deadline
        return due and self._job is not None and self._cancel is None

    def _poll(self, now: float) -> State:
        self._emit(Send(Ready(poll_timeout=self._cfg.poll_timeout, runner=self._cfg.runner_info)))
        self._deadline = now + self._cfg.poll_timeout + self._cfg.poll_margin
        return S.POLLING

    def _send_terminal(self, message: Terminal, now: float, state: State) -> State:
        self._emit(Send(message))
        self._deadline = now + self._cfg.ack_timeout
        return state

    def _stop_job(self, cause: CancelCause, reason: str) -> State:
        self._cancel, self._next_heartbeat = cause, None
        self._emit(CancelJob(reason))
        return S.CANCELING

    def _wait_expired(self, now: float) -> State:
        waited_for = "job or no_job" if self._state is S.POLLING else "ack"
        log.warning("no %s from the dispatcher in time; reconnecting", waited_for)
        self._emit(Close(1000, f"no {waited_for} in time"))
        self._deadline = None
        return self._after_disconnect(now)

    def _after_disconnect(self, now: float, minimum: float = 0.0) -> State:
        """The channel is gone and no job runs. Reconnect later; a draining agent exits unless
        it still holds a result it can deliver before its delivery deadline."""
        if self.draining:
            if self._held is None:
                return self._exit(0)
            if now >= self._delivery_deadline():
                return self._give_up_delivery()
        self._reconnect_later(now, minimum=minimum)
        return S.DISCONNECTED

    def _delivery_deadline(self) -> float:
        """While draining: until when to keep trying to deliver a held result."""
        if self._drain_deadline is None:
            raise AssertionError("no delivery deadline while not draining")
        return self._drain_deadline + self._cfg.ack_timeout

    def _give_up_delivery(self) -> State:
        """Draining ran out of time with an unacknowledged result: the spool keeps it for the
        next start; exit non-zero so the operator can tell the result was not delivered."""
        held = self._held.job if self._held is not None else "?"
        log.error("shutting down without delivering the result of job %s (kept in the spool)", held)
        return self._exit(EXIT_FORCED)

    def _reconnect_later(self, now: float, *, minimum: float = 0.0) -> None:
        delay = max(self._backoff.next_delay(), minimum)
        self._reconnect_at = now + delay
        log.info("reconnecting in %.1f s", delay)

    def _shrink_held(self, event: ConnectionLost) -> None:
        """The dispatcher refused the held result itself; resending it as is would loop forever."""
        held = self._held
        if held is None:
            return
        self._held = shrink_result(held, event.code, event.reason)
        if self._held is None:
            log.error("the dispatcher refused even the bare result of job %s; dropped", held.job)
            self._emit(DropPersisted(held.job, acknowledged=False))
        else:
            log.error("the dispatcher refused the result of job %s; re-sending it bare", held.job)
            self._emit(PersistResult(self._held))
