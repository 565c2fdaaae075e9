"""Builders for runner state-machine tests: messages, a machine, and ways to reach each state.

No event loop and no server: a machine is driven through legal inputs only (never by poking its
fields), so every test state is one a real runner can be in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dispatch_protocol.messages import (
    Ack,
    AckOf,
    Cancel,
    CancelReason,
    Completed,
    Failed,
    Heartbeat,
    Job,
    NoJob,
    Ready,
    RunnerInfo,
    Running,
    ServerMessage,
    Terminal,
)
from runner.backoff import Backoff
from runner.events import (
    Connected,
    ConnectFailed,
    ConnectionLost,
    Effect,
    Input,
    JobFinished,
    JobOutcome,
    MessageReceived,
    Send,
    ShutdownRequested,
    Tick,
)
from runner.machine import MachineConfig, RunnerMachine
from runner.states import State

J0 = "00000000-0000-4000-8000-000000000000"  # a job from before a restart
J1 = "11111111-1111-4111-8111-111111111111"  # the job the runner gets
J2 = "22222222-2222-4222-8222-222222222222"  # somebody else's

INFO = RunnerInfo(version="0.1.0", os="linux", arch="x86_64", hostname="host-1")
CONFIG = MachineConfig(
    poll_timeout=30,
    runner_info=INFO,
    poll_margin=15.0,
    ack_timeout=30.0,
    drain_timeout=100.0,
    max_auth_failures=3,
)
POLL_DEADLINE = 45.0  # poll_timeout + poll_margin
ACK_DEADLINE = 30.0
HEARTBEAT = 5.0
DRAIN = 100.0
BACKOFF = 1.0  # base == cap: every back-off delay is exactly one second

JOB = Job(
    job=J1,
    attempt=1,
    spec="linux",
    payload={"command": ["true"]},
    timeout=60.0,
    heartbeat_interval=HEARTBEAT,
    created="2025-01-01T00:00:00Z",
)
READY = Ready(poll_timeout=30, runner=INFO)
RUNNING = Running(job=J1, attempt=1)
HEARTBEAT_MSG = Heartbeat(job=J1, attempt=1)
OK = JobOutcome(exit_code=0, stdout="out", stderr="")
BROKEN = JobOutcome(exit_code=2, error="exit code 2", stdout="", stderr="boom")
COMPLETED = Completed(job=J1, attempt=1, exit_code=0, stdout="out", stderr="")
FAILED = Failed(job=J1, attempt=1, error="exit code 2", exit_code=2, stdout="", stderr="boom")
HELD = Completed(job=J0, attempt=2, exit_code=0, results={"a": 1}, stdout="old")


def msg(message: ServerMessage) -> MessageReceived:
    return MessageReceived(message)


def ack(job: str = J1, of: AckOf = "completed") -> MessageReceived:
    return msg(Ack(job=job, of=of))


def cancel(job: str = J1, attempt: int = 1, reason: CancelReason = "canceled") -> MessageReceived:
    return msg(Cancel(job=job, attempt=attempt, reason=reason))


def send(message: Ready | Running | Heartbeat | Terminal) -> Send:
    return Send(message)


AUTH = ConnectFailed(error="HTTP 401", auth_refused=True)
LOST = ConnectionLost(code=1006, reason="")
SHUTDOWN = ShutdownRequested()
TICK = Tick()
NO_JOB = msg(NoJob())
GOT_JOB = msg(JOB)

Step = Input | tuple[float, Input]  # a bare input happens at t=0


def make_machine(held: Terminal | None = None, config: MachineConfig = CONFIG) -> RunnerMachine:
    return RunnerMachine(config, backoff=Backoff(base=BACKOFF, cap=BACKOFF), held=held)


def drive(machine: RunnerMachine, steps: Sequence[Step]) -> list[Effect]:
    """Apply ``steps`` in order; returns the effects of the last one."""
    effects: list[Effect] = []
    for step in steps:
        now, event = step if isinstance(step, tuple) else (0.0, step)
        effects = machine.handle(event, now)
    return effects


@dataclass(frozen=True)
class Given:
    """A machine state described by how a real runner gets there."""

    name: str
    steps: tuple[Step, ...]
    held: Terminal | None = None
    config: MachineConfig = field(default=CONFIG)

    def build(self) -> RunnerMachine:
        machine = make_machine(self.held, self.config)
        machine.start()
        drive(machine, self.steps)
        return machine

    def then(self, name: str, *steps: Step) -> Given:
        return Given(name, self.steps + steps, self.held, self.config)


CONNECTING = Given("connecting", ())
DISCONNECTED = Given("disconnected after a failed attempt", (ConnectFailed("refused"),))
POLLING = Given("polling", (Connected(),))
RESENDING = Given("resending", (Connected(),), held=HELD)
RESENDING_DRAINING = RESENDING.then("resending, draining", SHUTDOWN)
EXECUTING = POLLING.then("executing", GOT_JOB)
DRAINING = EXECUTING.then("draining", SHUTDOWN)
CANCELING = EXECUTING.then("canceling", cancel())
CANCELING_DRAINING = CANCELING.then("canceling, draining", SHUTDOWN)
DRAIN_CANCELING = DRAINING.then("stopping at the drain deadline", (DRAIN, TICK))
OFFLINE = EXECUTING.then("executing offline", LOST)
OFFLINE_DRAINING = OFFLINE.then("executing offline, draining", SHUTDOWN)
OFFLINE_CANCELING = CANCELING.then("canceling offline", LOST)
AWAITING = EXECUTING.then("awaiting ack", JobFinished(OK))
AWAITING_DRAINING = AWAITING.then("awaiting ack, draining", SHUTDOWN)
STOPPED = POLLING.then("stopped", SHUTDOWN)

ONE_OF_EACH_STATE: dict[State, Given] = {
    State.DISCONNECTED: DISCONNECTED,
    State.RESENDING: RESENDING,
    State.POLLING: POLLING,
    State.EXECUTING: EXECUTING,
    State.DRAINING: DRAINING,
    State.CANCELING: CANCELING,
    State.EXECUTING_OFFLINE: OFFLINE,
    State.AWAITING_ACK: AWAITING,
    State.STOPPED: STOPPED,
}

ONE_OF_EACH_INPUT: list[Input] = [
    TICK,
    Connected(),
    ConnectFailed("refused"),
    LOST,
    GOT_JOB,
    NO_JOB,
    ack(),
    cancel(),
    JobFinished(OK),
    SHUTDOWN,
]
