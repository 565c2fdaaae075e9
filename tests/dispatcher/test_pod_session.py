"""The per-connection machine, fed events without an event loop."""

import pytest

from dispatcher.errors import ProtocolError
from dispatcher.session import TRANSITIONS, Event, Session, State


@pytest.mark.parametrize(
    ("state", "event", "expected"), [(s, e, n) for (s, e), n in TRANSITIONS.items()]
)
def test_every_declared_transition(state, event, expected):
    session = Session(state=state, job="j" if state is State.IN_FLIGHT else "", attempt=1)
    assert session.fire(event) is expected


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (State.READYING, "ready while a poll is open"),
        (State.POLLING, "ready while a poll is open"),
        (State.IN_FLIGHT, "ready while a job is in flight"),
    ],
)
def test_ready_out_of_turn_is_the_runners_fault_1008(state, reason):
    session = Session(state=state)
    with pytest.raises(ProtocolError) as info:
        session.fire(Event.READY)
    assert (info.value.code, info.value.reason) == (1008, reason)
    assert session.state is state


def test_running_while_polling_is_1008():
    session = Session(state=State.POLLING)
    with pytest.raises(ProtocolError) as info:
        session.fire(Event.RUNNING)
    assert info.value.code == 1008


def test_a_missing_transition_that_is_our_own_bug_is_not_a_protocol_error():
    with pytest.raises(RuntimeError):
        Session(state=State.IDLE).fire(Event.NO_JOB)


def test_job_is_held_only_while_in_flight():
    session = Session()
    session.fire(Event.READY)
    session.start_job("j1", 3, Event.SEND_JOB)
    assert session.holds("j1", 3) and not session.holds("j2", 3)
    assert not session.holds("j1", 2)  # another attempt of the same job is not ours
    assert (session.job, session.attempt) == ("j1", 3)
    session.fire(Event.JOB_DONE)
    assert not session.holds("j1", 3) and session.job == "" and session.state is State.IDLE


def test_each_ready_opens_a_new_poll_number():
    session = Session()
    session.fire(Event.READY)
    session.fire(Event.WAIT)
    first = session.poll
    session.fire(Event.NO_JOB)
    session.fire(Event.READY)
    assert session.poll == first + 1
