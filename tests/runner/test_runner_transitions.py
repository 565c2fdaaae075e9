"""Every transition of the runner machine, one table row each, plus every illegal input.

``CASES`` lists (given state, input, time) -> (state, exact effects). ``test_cases_cover_the_table``
proves that every (state, input type, target state) triple declared in ``TRANSITIONS`` is exercised
here, so adding a transition without a test fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dispatch_protocol.messages import Canceled, Failed
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
    PersistResult,
    StartJob,
)
from runner.machine import EXIT_FORCED, EXIT_TOKEN_REFUSED
from runner.results import DRAIN_TIMEOUT_ERROR
from runner.states import (
    CONNECTED_STATES,
    SERVER_MESSAGE_TYPES,
    TRANSITIONS,
    LocalProtocolError,
    RemoteProtocolError,
    State,
    event_type,
)
from tests.runner.runner_machine_helpers import (
    ACK_DEADLINE,
    AUTH,
    AWAITING,
    AWAITING_DRAINING,
    BROKEN,
    CANCELING,
    CANCELING_DRAINING,
    COMPLETED,
    CONNECTING,
    DISCONNECTED,
    DRAIN,
    DRAIN_CANCELING,
    DRAINING,
    EXECUTING,
    FAILED,
    GOT_JOB,
    HEARTBEAT,
    HEARTBEAT_MSG,
    HELD,
    J0,
    J1,
    J2,
    JOB,
    LOST,
    NO_JOB,
    OFFLINE,
    OFFLINE_CANCELING,
    OFFLINE_DRAINING,
    OK,
    ONE_OF_EACH_INPUT,
    ONE_OF_EACH_STATE,
    POLL_DEADLINE,
    POLLING,
    READY,
    RESENDING,
    RESENDING_DRAINING,
    RUNNING,
    SHUTDOWN,
    TICK,
    Given,
    ack,
    cancel,
    send,
)

S = State
BYE = Close(1001, "runner shutting down")
NO_ACK = Close(1000, "no ack in time")
BARE = Failed(
    job=J1,
    attempt=1,
    error="result refused by the dispatcher (close 1009: too big); outputs dropped",
    exit_code=0,
)
CANCELED = Canceled(job=J1, attempt=1)
DRAIN_FAILED = Failed(
    job=J1, attempt=1, error=DRAIN_TIMEOUT_ERROR, exit_code=0, stdout="out", stderr=""
)
P = PersistResult
REFUSED_TWICE = ((1, TICK), (1, AUTH), (2, TICK), (2, AUTH), (3, TICK))
IDLE_REFUSED = DISCONNECTED.then("token refused twice", *REFUSED_TWICE)
OFFLINE_REFUSED = OFFLINE.then("executing, token refused twice", *REFUSED_TWICE)
RECONNECTING = OFFLINE.then("reconnecting", (1, TICK))
RECONNECTING_DRAINING = OFFLINE_DRAINING.then("reconnecting, draining", (1, TICK))
RECONNECTING_CANCELING = OFFLINE_CANCELING.then("reconnecting, canceling", (1, TICK))
HELD_DRAINING_OFFLINE = RESENDING_DRAINING.then("disconnected, draining, result held", (0, LOST))


@dataclass(frozen=True)
class Case:
    given: Given
    event: Input
    state: State
    effects: list[Effect]
    now: float = 0.0

    @property
    def id(self) -> str:
        return f"{self.given.name} + {self.event!r} -> {self.state.value}"


CASES = [
    # -- disconnected -----------------------------------------------------------------------------
    Case(DISCONNECTED, TICK, S.DISCONNECTED, [], now=0.5),
    Case(DISCONNECTED, TICK, S.DISCONNECTED, [Connect()], now=1.0),
    Case(CONNECTING, Connected(), S.POLLING, [send(READY)]),
    Case(Given("connecting, result held", (), held=HELD), Connected(), S.RESENDING, [send(HELD)]),
    Case(CONNECTING, ConnectFailed("refused"), S.DISCONNECTED, []),
    Case(IDLE_REFUSED, AUTH, S.STOPPED, [Exit(EXIT_TOKEN_REFUSED)], now=3),
    Case(DISCONNECTED, SHUTDOWN, S.STOPPED, [Exit(0)]),
    # -- resending a held result ------------------------------------------------------------------
    Case(RESENDING, ack(J0, "completed"), S.POLLING, [DropPersisted(J0), send(READY)]),
    Case(RESENDING, ack(J0, "heartbeat"), S.RESENDING, []),
    Case(RESENDING, ack(J2, "completed"), S.RESENDING, []),
    Case(RESENDING_DRAINING, ack(J0, "completed"), S.STOPPED, [DropPersisted(J0), BYE, Exit(0)]),
    Case(RESENDING, cancel(J0, 2, "lease_lost"), S.RESENDING, []),
    Case(RESENDING, TICK, S.RESENDING, [], now=ACK_DEADLINE - 0.1),
    Case(RESENDING, TICK, S.DISCONNECTED, [NO_ACK], now=ACK_DEADLINE),
    Case(RESENDING_DRAINING, TICK, S.DISCONNECTED, [NO_ACK], now=ACK_DEADLINE),
    Case(RESENDING_DRAINING, TICK, S.STOPPED, [NO_ACK, Exit(EXIT_FORCED)], now=100_000),
    Case(RESENDING, LOST, S.DISCONNECTED, []),
    Case(RESENDING_DRAINING, LOST, S.DISCONNECTED, []),
    Case(RESENDING_DRAINING, LOST, S.STOPPED, [Exit(EXIT_FORCED)], now=100_000),
    Case(RESENDING, SHUTDOWN, S.RESENDING, []),
    Case(RESENDING_DRAINING, SHUTDOWN, S.STOPPED, [BYE, Exit(EXIT_FORCED)]),
    # -- polling ----------------------------------------------------------------------------------
    Case(POLLING, GOT_JOB, S.EXECUTING, [send(RUNNING), StartJob(JOB)]),
    Case(POLLING, NO_JOB, S.POLLING, [send(READY)]),
    Case(POLLING, ack(J0), S.POLLING, []),
    Case(POLLING, cancel(J0), S.POLLING, []),
    Case(POLLING, TICK, S.POLLING, [], now=POLL_DEADLINE - 0.1),
    Case(POLLING, TICK, S.DISCONNECTED, [Close(1000, "no job or no_job in time")], POLL_DEADLINE),
    Case(POLLING, LOST, S.DISCONNECTED, []),
    Case(POLLING, SHUTDOWN, S.STOPPED, [BYE, Exit(0)]),
    # -- executing --------------------------------------------------------------------------------
    Case(EXECUTING, TICK, S.EXECUTING, [], now=HEARTBEAT - 0.1),
    Case(EXECUTING, TICK, S.EXECUTING, [send(HEARTBEAT_MSG)], now=HEARTBEAT),
    Case(EXECUTING, ack(J1, "running"), S.EXECUTING, []),
    Case(EXECUTING, cancel(J1, 1, "canceled"), S.CANCELING, [CancelJob("canceled")]),
    Case(EXECUTING, cancel(J1, 2, "lease_lost"), S.EXECUTING, []),
    Case(EXECUTING, JobFinished(OK), S.AWAITING_ACK, [P(COMPLETED), send(COMPLETED)]),
    Case(EXECUTING, JobFinished(BROKEN), S.AWAITING_ACK, [P(FAILED), send(FAILED)]),
    Case(EXECUTING, LOST, S.EXECUTING_OFFLINE, []),
    Case(EXECUTING, SHUTDOWN, S.DRAINING, []),
    # -- draining ---------------------------------------------------------------------------------
    Case(DRAINING, TICK, S.DRAINING, [send(HEARTBEAT_MSG)], now=HEARTBEAT),
    Case(DRAINING, TICK, S.CANCELING, [send(HEARTBEAT_MSG), CancelJob("drain timeout")], DRAIN),
    Case(DRAINING, ack(J1, "heartbeat"), S.DRAINING, []),
    Case(DRAINING, cancel(J1, 1, "timeout"), S.CANCELING, [CancelJob("timeout")]),
    Case(DRAINING, cancel(J2, 1, "timeout"), S.DRAINING, []),
    Case(DRAINING, JobFinished(OK), S.AWAITING_ACK, [P(COMPLETED), send(COMPLETED)]),
    Case(DRAINING, LOST, S.EXECUTING_OFFLINE, []),
    Case(DRAINING, SHUTDOWN, S.STOPPED, [BYE, Exit(EXIT_FORCED)]),
    # -- canceling --------------------------------------------------------------------------------
    Case(CANCELING, TICK, S.CANCELING, [], now=HEARTBEAT * 3),  # no heartbeats for a dead job
    Case(CANCELING, ack(J1, "heartbeat"), S.CANCELING, []),
    Case(CANCELING, cancel(J1, 1, "lease_lost"), S.CANCELING, []),
    Case(CANCELING, JobFinished(OK), S.AWAITING_ACK, [P(CANCELED), send(CANCELED)]),
    Case(DRAIN_CANCELING, JobFinished(OK), S.AWAITING_ACK, [P(DRAIN_FAILED), send(DRAIN_FAILED)]),
    Case(CANCELING, LOST, S.EXECUTING_OFFLINE, []),
    Case(CANCELING, SHUTDOWN, S.CANCELING, []),
    Case(CANCELING_DRAINING, SHUTDOWN, S.STOPPED, [BYE, Exit(EXIT_FORCED)]),
    # -- executing while the channel is down ------------------------------------------------------
    Case(OFFLINE, TICK, S.EXECUTING_OFFLINE, [], now=0.5),
    Case(OFFLINE, TICK, S.EXECUTING_OFFLINE, [Connect()], now=1.0),
    Case(OFFLINE_DRAINING, TICK, S.EXECUTING_OFFLINE, [CancelJob("drain timeout"), Connect()], 100),
    Case(RECONNECTING, Connected(), S.EXECUTING, [send(RUNNING)]),
    Case(RECONNECTING_DRAINING, Connected(), S.DRAINING, [send(RUNNING)]),
    Case(RECONNECTING_CANCELING, Connected(), S.CANCELING, [send(RUNNING)]),
    Case(RECONNECTING, ConnectFailed("refused"), S.EXECUTING_OFFLINE, []),
    Case(OFFLINE_REFUSED, AUTH, S.EXECUTING_OFFLINE, [], now=3),  # a running job is never abandoned
    Case(OFFLINE, JobFinished(OK), S.DISCONNECTED, [P(COMPLETED)]),
    Case(OFFLINE_DRAINING, JobFinished(OK), S.DISCONNECTED, [P(COMPLETED)]),
    Case(
        OFFLINE_DRAINING, JobFinished(OK), S.STOPPED, [P(COMPLETED), Exit(EXIT_FORCED)], now=100_000
    ),
    Case(OFFLINE, SHUTDOWN, S.EXECUTING_OFFLINE, []),
    Case(OFFLINE_DRAINING, SHUTDOWN, S.STOPPED, [Exit(EXIT_FORCED)]),
    # -- awaiting the terminal ack ----------------------------------------------------------------
    Case(AWAITING, ack(J1, "completed"), S.POLLING, [DropPersisted(J1), send(READY)]),
    Case(AWAITING, ack(J1, "heartbeat"), S.AWAITING_ACK, []),  # §6.2.6: a stale heartbeat ack
    Case(AWAITING, ack(J1, "running"), S.AWAITING_ACK, []),
    Case(AWAITING, ack(J2, "completed"), S.AWAITING_ACK, []),
    Case(AWAITING_DRAINING, ack(J1, "completed"), S.STOPPED, [DropPersisted(J1), BYE, Exit(0)]),
    Case(AWAITING, cancel(J1, 1, "timeout"), S.AWAITING_ACK, []),
    Case(AWAITING, TICK, S.AWAITING_ACK, [], now=ACK_DEADLINE - 0.1),
    Case(AWAITING, TICK, S.DISCONNECTED, [NO_ACK], now=ACK_DEADLINE),
    Case(AWAITING_DRAINING, TICK, S.DISCONNECTED, [NO_ACK], now=ACK_DEADLINE),
    Case(AWAITING_DRAINING, TICK, S.STOPPED, [NO_ACK, Exit(EXIT_FORCED)], now=100_000),
    Case(AWAITING, LOST, S.DISCONNECTED, []),
    Case(AWAITING, ConnectionLost(1009, "too big"), S.DISCONNECTED, [P(BARE)]),
    Case(AWAITING_DRAINING, LOST, S.DISCONNECTED, []),
    Case(AWAITING_DRAINING, LOST, S.STOPPED, [Exit(EXIT_FORCED)], now=100_000),
    # a draining agent keeps trying to deliver a held result until its delivery deadline
    Case(HELD_DRAINING_OFFLINE, TICK, S.DISCONNECTED, [Connect()], now=1.0),
    Case(HELD_DRAINING_OFFLINE, TICK, S.STOPPED, [Exit(EXIT_FORCED)], now=100_000),
    Case(AWAITING, SHUTDOWN, S.AWAITING_ACK, []),
    Case(AWAITING_DRAINING, SHUTDOWN, S.STOPPED, [BYE, Exit(EXIT_FORCED)]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_transition(case: Case) -> None:
    machine = case.given.build()
    effects = machine.handle(case.event, case.now)
    assert (machine.state, effects) == (case.state, case.effects)


def test_cases_cover_the_table() -> None:
    declared = {
        (state, kind, target)
        for state, row in TRANSITIONS.items()
        for kind, targets in row.items()
        for target in targets
    }
    covered = {(c.given.build().state, event_type(c.event), c.state) for c in CASES}
    assert declared - covered == set()
    assert covered - declared == set()


ILLEGAL = [
    (state, event)
    for state, given in ONE_OF_EACH_STATE.items()
    if state is not State.STOPPED
    for event in ONE_OF_EACH_INPUT
    if event_type(event) not in TRANSITIONS[state]
]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=[f"{s.value}-{e!r}" for s, e in ILLEGAL])
def test_illegal_input_raises_and_changes_nothing(state: State, event: Input) -> None:
    machine = ONE_OF_EACH_STATE[state].build()
    deadline = machine.next_deadline()
    from_dispatcher = event_type(event) in SERVER_MESSAGE_TYPES and state in CONNECTED_STATES
    expected = RemoteProtocolError if from_dispatcher else LocalProtocolError
    with pytest.raises(expected) as raised:
        machine.handle(event, 1.0)
    assert type(raised.value) is expected
    assert raised.value.fault in str(raised.value)
    assert (machine.state, machine.next_deadline()) == (state, deadline)


def test_remote_errors_carry_the_close_code() -> None:
    machine = EXECUTING.build()
    with pytest.raises(RemoteProtocolError, match="dispatcher's fault") as raised:
        machine.handle(NO_JOB, 1.0)
    assert raised.value.close_code == 1008


@pytest.mark.parametrize("event", ONE_OF_EACH_INPUT, ids=repr)
def test_stopped_absorbs_every_input(event: Input) -> None:
    machine = ONE_OF_EACH_STATE[State.STOPPED].build()
    assert machine.handle(event, 1.0) == []
    assert machine.state is State.STOPPED
