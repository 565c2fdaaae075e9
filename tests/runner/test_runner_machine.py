"""Runner machine scenarios: the reference §5.2 checklist, kept where PROTOCOL.md agrees, and
the §6 weaknesses it fixes. Numbers in comments refer to reference §5.2 tests.

Single transitions are in ``test_runner_transitions.py``; these follow a runner through several.
"""

from __future__ import annotations

import random

import pytest
from msgspec.structs import replace

from dispatch_protocol.messages import Canceled, Completed, Failed, Ready
from runner.backoff import Backoff
from runner.events import (
    CancelJob,
    Close,
    Connect,
    Connected,
    ConnectFailed,
    ConnectionLost,
    DropPersisted,
    Exit,
    JobFinished,
    MessageReceived,
    PersistResult,
    StartJob,
)
from runner.machine import MAX_RETRY_AFTER, MachineConfig, RunnerMachine
from runner.results import DRAIN_TIMEOUT_ERROR
from runner.states import LocalProtocolError, State
from tests.runner import runner_machine_helpers as helpers
from tests.runner.runner_machine_helpers import (
    ACK_DEADLINE,
    AUTH,
    AWAITING,
    CONFIG,
    EXECUTING,
    GOT_JOB,
    HEARTBEAT,
    HEARTBEAT_MSG,
    HELD,
    INFO,
    J0,
    J1,
    JOB,
    LOST,
    NO_JOB,
    OK,
    POLLING,
    READY,
    RUNNING,
    SHUTDOWN,
    TICK,
    ack,
    cancel,
    drive,
    make_machine,
    send,
)


def test_initial_effects_connect() -> None:  # 1
    machine = make_machine()
    assert machine.start() == [Connect()]
    assert machine.state is State.DISCONNECTED
    assert machine.next_deadline() is None  # nothing to time while the attempt is in flight


def test_start_twice_is_a_runner_bug() -> None:
    machine = make_machine()
    machine.start()
    with pytest.raises(LocalProtocolError):
        machine.start()


def test_ready_carries_poll_timeout_and_runner_info() -> None:  # 2, 29
    machine = make_machine(config=MachineConfig(poll_timeout=60, runner_info=INFO, poll_margin=15))
    machine.start()
    assert machine.handle(Connected(), 10.0) == [send(Ready(poll_timeout=60, runner=INFO))]
    assert machine.next_deadline() == 10.0 + 60 + 15


def test_full_happy_path_returns_to_polling() -> None:  # 27, 45
    machine = make_machine()
    machine.start()
    assert drive(machine, [Connected()]) == [send(READY)]
    assert drive(machine, [(1.0, GOT_JOB)]) == [send(RUNNING), StartJob(JOB)]
    assert drive(machine, [(1.0 + HEARTBEAT, TICK)]) == [send(HEARTBEAT_MSG)]
    completed = Completed(job=J1, attempt=1, exit_code=0, stdout="out", stderr="")
    assert drive(machine, [(7.0, JobFinished(OK))]) == [PersistResult(completed), send(completed)]
    assert machine.next_deadline() == 7.0 + ACK_DEADLINE  # 30
    assert drive(machine, [(8.0, ack(J1, "completed"))]) == [DropPersisted(J1), send(READY)]
    assert (machine.state, machine.held, machine.job) == (State.POLLING, None, None)


def test_no_job_sends_ready_again_with_a_new_deadline() -> None:  # 9
    machine = POLLING.build()
    assert machine.handle(NO_JOB, 40.0) == [send(READY)]
    assert machine.next_deadline() == 40.0 + 45.0


def test_held_result_is_sent_before_ready_and_acked_first() -> None:  # 3, 5
    machine = make_machine(held=HELD)
    machine.start()
    assert machine.handle(Connected(), 0.0) == [send(HELD)]
    assert machine.handle(ack(J0, "heartbeat"), 1.0) == []  # not the ack it waits for
    assert machine.handle(ack(J0, "completed"), 2.0) == [DropPersisted(J0), send(READY)]


def test_stale_heartbeat_ack_never_satisfies_the_terminal_wait() -> None:  # 16, 17, §6.2.6
    machine = EXECUTING.build()
    machine.handle(TICK, HEARTBEAT)  # heartbeat out; its ack is still on the wire
    machine.handle(JobFinished(OK), 5.5)
    assert machine.handle(ack(J1, "heartbeat"), 5.6) == []
    assert machine.state is State.AWAITING_ACK and machine.held is not None
    assert machine.handle(ack(J1, "completed"), 5.7) == [DropPersisted(J1), send(READY)]


def test_send_failure_keeps_the_result_for_the_next_connection() -> None:  # 19, 20
    machine = AWAITING.build()
    held = machine.held
    assert held is not None
    assert machine.handle(LOST, 1.0) == []
    assert (machine.state, machine.held) == (State.DISCONNECTED, held)
    assert machine.handle(TICK, 2.0) == [Connect()]
    assert machine.handle(Connected(), 2.5) == [send(held)]
    assert machine.state is State.RESENDING


def test_result_is_never_dropped_while_the_dispatcher_is_unreachable() -> None:  # 6, 28; not 7
    machine = AWAITING.build()
    held = machine.held
    assert held is not None
    now = 0.0
    for _ in range(20):  # the old runner gave up after 6 sends; a lost result is worse
        now += ACK_DEADLINE
        assert machine.handle(TICK, now) == [Close(1000, "no ack in time")]
        now += 1.0
        assert machine.handle(TICK, now) == [Connect()]
        assert machine.handle(Connected(), now) == [send(held)]
    assert machine.held == held


def test_refused_result_is_shrunk_then_dropped() -> None:  # 7, 35 done right
    machine = AWAITING.build()
    machine.handle(ConnectionLost(1009, "message too big"), 1.0)
    bare = machine.held
    assert isinstance(bare, Failed) and bare.stdout is None and bare.exit_code == 0
    assert "close 1009" in bare.error
    machine.handle(TICK, 2.0)
    assert machine.handle(Connected(), 2.0) == [send(bare)]
    assert machine.handle(ConnectionLost(1007, "invalid"), 3.0) == [
        DropPersisted(J1, acknowledged=False)
    ]
    machine.handle(TICK, 4.0)
    assert machine.handle(Connected(), 4.0) == [send(READY)]


def test_shrunk_failure_keeps_the_original_error() -> None:
    big = Failed(job=J1, attempt=1, error="exit code 2", exit_code=2, stdout="x" * 100)
    machine = make_machine(held=big)
    machine.start()
    machine.handle(Connected(), 0.0)
    (effect,) = machine.handle(ConnectionLost(1009, "too big"), 1.0)
    assert isinstance(effect, PersistResult) and isinstance(effect.message, Failed)
    assert effect.message.error.endswith("original error: exit code 2")
    assert effect.message.exit_code == 2


def test_job_starts_with_running_then_the_job() -> None:  # 8
    machine = POLLING.build()
    assert machine.handle(GOT_JOB, 3.0) == [send(RUNNING), StartJob(JOB)]
    assert (machine.state, machine.job) == (State.EXECUTING, JOB)
    assert machine.next_deadline() == 3.0 + HEARTBEAT


def test_heartbeats_follow_the_jobs_interval() -> None:
    machine = POLLING.build()
    machine.handle(MessageReceived(replace(JOB, heartbeat_interval=0.5)), 0.0)
    sent = [machine.handle(TICK, t / 10) for t in range(1, 21)]
    assert sum(e == [send(HEARTBEAT_MSG)] for e in sent) == 4  # at 0.5, 1.0, 1.5, 2.0


def test_zero_heartbeat_interval_cannot_spin() -> None:
    machine = POLLING.build()
    machine.handle(MessageReceived(replace(JOB, heartbeat_interval=0.0)), 0.0)
    assert machine.next_deadline() == CONFIG.min_heartbeat_interval


def test_reattach_sends_running_not_ready_and_resumes_heartbeats() -> None:  # 15 fixed
    machine = EXECUTING.build()
    machine.handle(LOST, 2.0)
    assert machine.handle(TICK, 3.0) == [Connect()]
    assert machine.handle(Connected(), 3.5) == [send(RUNNING)]
    assert machine.next_deadline() == 3.5 + HEARTBEAT
    assert machine.handle(TICK, 8.5) == [send(HEARTBEAT_MSG)]


def test_lease_lost_after_reattach_stops_the_job_and_reports_canceled() -> None:
    machine = EXECUTING.build()
    machine.handle(LOST, 2.0)
    machine.handle(TICK, 3.0)
    machine.handle(Connected(), 3.0)
    assert machine.handle(cancel(J1, 1, "lease_lost"), 3.1) == [CancelJob("lease_lost")]
    canceled = Canceled(job=J1, attempt=1)
    assert machine.handle(JobFinished(OK), 4.0) == [PersistResult(canceled), send(canceled)]
    assert machine.handle(ack(J1, "canceled"), 4.1) == [DropPersisted(J1), send(READY)]


def test_job_finishing_offline_is_sent_first_after_reconnecting() -> None:
    machine = EXECUTING.build()
    machine.handle(LOST, 1.0)
    machine.handle(JobFinished(OK), 1.5)
    held, offline_state = machine.held, machine.state
    assert held is not None
    machine.handle(TICK, 2.0)
    assert machine.handle(Connected(), 2.0) == [send(held)]
    assert (offline_state, machine.state) == (State.DISCONNECTED, State.RESENDING)


def test_drain_lets_the_job_finish_delivers_and_exits_zero() -> None:  # 25 fixed, §6.2.11
    machine = EXECUTING.build()
    assert machine.handle(SHUTDOWN, 1.0) == []
    assert machine.handle(TICK, HEARTBEAT) == [send(HEARTBEAT_MSG)]  # lease kept while draining
    *_, sent = machine.handle(JobFinished(OK), 6.0)
    assert sent == send(Completed(job=J1, attempt=1, exit_code=0, stdout="out", stderr=""))
    bye = [DropPersisted(J1), Close(1001, "runner shutting down"), Exit(0)]
    assert machine.handle(ack(J1, "completed"), 6.5) == bye


def test_drain_timeout_stops_the_job_and_reports_it_failed() -> None:
    machine = EXECUTING.build()
    machine.handle(SHUTDOWN, 10.0)
    assert machine.next_deadline() == HEARTBEAT  # heartbeat first
    machine.handle(TICK, HEARTBEAT)
    machine.handle(TICK, 10.0 + CONFIG.drain_timeout)
    assert machine.state is State.CANCELING
    machine.handle(JobFinished(OK), 111.0)
    assert isinstance(machine.held, Failed) and machine.held.error == DRAIN_TIMEOUT_ERROR


def test_shutdown_twice_exits_at_once_keeping_the_result() -> None:
    machine = AWAITING.build()
    machine.handle(SHUTDOWN, 1.0)
    assert machine.handle(SHUTDOWN, 1.1) == [Close(1001, "runner shutting down"), Exit(1)]
    assert machine.held is not None  # still in the spool for the next start


def test_cancel_for_another_attempt_is_ignored() -> None:
    machine = EXECUTING.build()
    assert machine.handle(cancel(J1, 7, "lease_lost"), 1.0) == []
    assert machine.state is State.EXECUTING


def test_connect_failures_back_off_and_reset_after_success() -> None:  # 4, 32; §6.2.14
    machine = RunnerMachine(CONFIG, backoff=Backoff(rng=random.Random(7)))
    machine.start()
    now, delays = 0.0, []
    for _ in range(8):
        machine.handle(ConnectFailed("refused"), now)
        deadline = machine.next_deadline()
        assert deadline is not None
        delays.append(deadline - now)
        now = deadline
        assert machine.handle(TICK, now) == [Connect()]
    assert all(1.0 <= d <= 60.0 for d in delays) and delays[-1] > delays[0]
    machine.handle(Connected(), now)
    machine.handle(LOST, now)
    deadline = machine.next_deadline()
    assert deadline is not None and deadline - now <= 3.0  # reset: back to base * 3 at most


def test_retry_after_is_honoured_and_capped() -> None:
    machine = make_machine()
    machine.start()
    machine.handle(ConnectFailed("HTTP 429", retry_after=42.0), 0.0)
    assert machine.next_deadline() == 42.0
    machine.handle(TICK, 42.0)
    machine.handle(ConnectFailed("HTTP 429", retry_after=1e9), 42.0)
    assert machine.next_deadline() == 42.0 + MAX_RETRY_AFTER


def test_superseded_connection_waits_the_longest_delay() -> None:
    machine = RunnerMachine(CONFIG, backoff=Backoff(base=1.0, cap=60.0, rng=random.Random(1)))
    machine.start()
    machine.handle(Connected(), 0.0)
    machine.handle(ConnectionLost(4002, "superseded"), 5.0)
    assert machine.next_deadline() == 65.0


def test_token_refusals_while_idle_exit_three() -> None:
    machine = make_machine()
    machine.start()
    effects = machine.handle(AUTH, 0.0)
    for now in (1.0, 2.0):
        machine.handle(TICK, now)
        effects = machine.handle(AUTH, now)
    assert effects == [Exit(3)]


def test_a_success_resets_the_token_refusal_count() -> None:
    machine = make_machine()
    machine.start()
    machine.handle(AUTH, 0.0)
    machine.handle(TICK, 1.0)
    machine.handle(AUTH, 1.0)
    machine.handle(TICK, 2.0)
    machine.handle(Connected(), 2.0)
    machine.handle(LOST, 2.0)
    for now in (3.0, 4.0):
        machine.handle(TICK, now)
        assert machine.handle(AUTH, now) == []


def test_tick_while_connecting_does_not_connect_twice() -> None:
    machine = make_machine()
    machine.start()
    assert machine.handle(TICK, 100.0) == []
    machine.handle(ConnectFailed("refused"), 100.0)
    assert machine.handle(TICK, 101.0) == [Connect()]
    assert machine.handle(TICK, 200.0) == []


def test_connection_result_without_connect_is_a_runner_bug() -> None:  # 31
    machine = make_machine()
    machine.start()
    machine.handle(ConnectFailed("refused"), 0.0)
    with pytest.raises(LocalProtocolError, match="runner's fault"):
        machine.handle(Connected(), 0.5)
    assert machine.state is State.DISCONNECTED


def test_next_deadline_per_state() -> None:
    assert POLLING.build().next_deadline() == 45.0
    assert EXECUTING.build().next_deadline() == HEARTBEAT
    assert AWAITING.build().next_deadline() == ACK_DEADLINE
    canceling = EXECUTING.then("canceling", cancel()).build()
    assert canceling.next_deadline() is None  # waits for the job only


GIVENS = [
    value
    for name, value in vars(helpers).items()
    if isinstance(value, helpers.Given) and name.isupper()
]


@pytest.mark.parametrize("given", GIVENS, ids=lambda g: g.name)
def test_a_passed_deadline_is_always_cleared_by_a_tick(given: helpers.Given) -> None:
    # Otherwise the driver, which sleeps until next_deadline(), would spin.
    machine = given.build()
    for _ in range(10):
        deadline = machine.next_deadline()
        if deadline is None or machine.state is State.STOPPED:
            break
        machine.handle(TICK, deadline)
        later = machine.next_deadline()
        assert later is None or later > deadline
