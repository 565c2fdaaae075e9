"""``dispatch-runner --once`` in the pure machine: one job, its result acknowledged, then exit.

Driven through legal inputs only, with time passed in (no event loop, no server).
"""

from __future__ import annotations

import dataclasses

from dispatch_protocol.messages import Canceled, Completed, Failed
from runner.events import (
    Close,
    Connect,
    Connected,
    ConnectionLost,
    DropPersisted,
    Exit,
    JobFinished,
    JobOutcome,
)
from runner.machine import EXIT_ONCE_NOT_RUN, EXIT_TOKEN_REFUSED, once_exit_code
from runner.states import State
from tests.runner.runner_machine_helpers import (
    AUTH,
    BROKEN,
    CONFIG,
    GOT_JOB,
    HELD,
    J0,
    J1,
    LOST,
    OK,
    READY,
    TICK,
    ack,
    cancel,
    make_machine,
    send,
)

ONCE = dataclasses.replace(CONFIG, once=True)
BYE = [Close(1000, "one job done")]


def _executing_once(held=None):
    machine = make_machine(held=held, config=ONCE)
    machine.start()
    machine.handle(Connected(), 0.0)
    if held is not None:
        machine.handle(ack(J0, "completed"), 0.5)
    machine.handle(GOT_JOB, 1.0)
    return machine


def test_once_exits_zero_after_the_ack_of_its_one_job() -> None:
    machine = _executing_once()
    machine.handle(JobFinished(OK), 2.0)
    effects = machine.handle(ack(J1, "completed"), 3.0)
    assert effects == [DropPersisted(J1), *BYE, Exit(0)]
    assert machine.state is State.STOPPED


def test_once_exits_zero_when_the_command_failed_with_an_exit_code() -> None:
    machine = _executing_once()
    machine.handle(JobFinished(BROKEN), 2.0)
    assert machine.handle(ack(J1, "failed"), 3.0) == [DropPersisted(J1), *BYE, Exit(0)]


def test_once_exits_non_zero_when_the_job_could_not_run() -> None:
    machine = _executing_once()
    machine.handle(JobFinished(JobOutcome(error="command not found: nope")), 2.0)
    effects = machine.handle(ack(J1, "failed"), 3.0)
    assert effects == [DropPersisted(J1), *BYE, Exit(EXIT_ONCE_NOT_RUN)]


def test_once_canceled_by_the_dispatcher_exits_non_zero() -> None:
    machine = _executing_once()
    machine.handle(cancel(), 2.0)
    machine.handle(JobFinished(JobOutcome(error="killed")), 2.5)
    effects = machine.handle(ack(J1, "canceled"), 3.0)
    assert effects[-1] == Exit(EXIT_ONCE_NOT_RUN)


def test_once_never_asks_for_a_second_job_before_the_ack() -> None:
    machine = _executing_once()
    *_, sent = machine.handle(JobFinished(OK), 2.0)
    assert sent == send(Completed(job=J1, attempt=1, exit_code=0, stdout="out", stderr=""))
    assert machine.handle(ack(J1, "heartbeat"), 2.1) == []  # not the ack it waits for
    assert machine.state is State.AWAITING_ACK


def test_once_keeps_its_result_across_a_lost_connection_then_exits_after_the_ack() -> None:
    machine = _executing_once()
    machine.handle(JobFinished(OK), 2.0)
    machine.handle(LOST, 2.1)
    assert machine.handle(TICK, 3.2) == [Connect()]
    held = machine.held
    assert held is not None and machine.handle(Connected(), 3.3) == [send(held)]
    assert machine.handle(ack(J1, "completed"), 3.4)[-1] == Exit(0)


def test_a_held_result_from_an_earlier_life_is_not_the_one_job() -> None:
    machine = make_machine(held=HELD, config=ONCE)
    machine.start()
    machine.handle(Connected(), 0.0)
    # the earlier life's result is delivered first; then the runner asks for its one job
    assert machine.handle(ack(J0, "completed"), 0.5) == [DropPersisted(J0), send(READY)]
    machine.handle(GOT_JOB, 1.0)
    machine.handle(JobFinished(OK), 2.0)
    assert machine.handle(ack(J1, "completed"), 3.0)[-1] == Exit(0)


def test_without_once_the_runner_polls_again() -> None:
    machine = make_machine()
    machine.start()
    machine.handle(Connected(), 0.0)
    machine.handle(GOT_JOB, 1.0)
    machine.handle(JobFinished(OK), 2.0)
    assert machine.handle(ack(J1, "completed"), 3.0) == [DropPersisted(J1), send(READY)]


def test_exit_code_of_each_terminal_message() -> None:
    assert once_exit_code(Completed(job=J1, attempt=1, exit_code=0)) == 0
    assert once_exit_code(Failed(job=J1, attempt=1, error="exit code 3", exit_code=3)) == 0
    assert once_exit_code(Failed(job=J1, attempt=1, error="bad payload")) == EXIT_ONCE_NOT_RUN
    assert once_exit_code(Canceled(job=J1, attempt=1)) == EXIT_ONCE_NOT_RUN


def test_once_exits_at_the_first_token_refusal_after_its_job() -> None:
    """An ephemeral registration ended by the server (a cancel, then 4001): the result cannot be
    delivered any more, so the agent does not wait through ``max_auth_failures`` refusals."""
    machine = _executing_once()
    machine.handle(cancel(), 2.0)
    machine.handle(ConnectionLost(code=4001, reason="runner token revoked"), 2.1)
    machine.handle(JobFinished(JobOutcome(error="killed")), 2.2)
    assert machine.state is State.DISCONNECTED and machine.held is not None
    assert machine.handle(TICK, 3.3) == [Connect()]
    assert machine.handle(AUTH, 3.4) == [Exit(EXIT_TOKEN_REFUSED)]


def test_once_before_its_job_keeps_the_usual_refusal_budget() -> None:
    machine = make_machine(config=ONCE)
    machine.start()
    assert machine.handle(AUTH, 0.0) == []  # CONFIG allows 3 refusals in a row
    assert machine.state is State.DISCONNECTED
