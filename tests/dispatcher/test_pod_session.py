"""The per-connection machine, fed events without an event loop."""

import dataclasses

import pytest

from dispatcher.errors import ProtocolError
from dispatcher.pod.bells import Bell, Offer
from dispatcher.pod.session import (
    TRANSITIONS,
    BellAction,
    Event,
    Observed,
    ReadyPlan,
    Session,
    State,
)


def test_an_attempt_given_back_unsent_is_never_sent_on_that_connection():
    session = polling_session()
    session.released("j1", 1)
    assert session.rung(Bell("r1", 5, "j1", 1, OFFER), conn=5) is BellAction.DONE
    assert not session.begin_delivery(OFFER)
    assert session.rung(Bell("r1", 5, "j1", 2, dataclasses.replace(OFFER, attempt=2)), conn=5) is (
        BellAction.SEND
    )


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


# -- the table, exhaustively ------------------------------------------------------------------

# Every (state, event) pair of the table, as a row a test runs: given state, input -> next state.
CASES: list[tuple[State, Event, State]] = [
    (State.IDLE, Event.READY, State.READYING),
    (State.LINGERING, Event.READY, State.READYING),
    (State.READYING, Event.WAIT, State.POLLING),
    (State.READYING, Event.SEND_JOB, State.IN_FLIGHT),
    (State.POLLING, Event.SEND_JOB, State.IN_FLIGHT),
    (State.POLLING, Event.NO_JOB, State.IDLE),
    (State.POLLING, Event.LINGER, State.LINGERING),
    (State.LINGERING, Event.LINGER_END, State.IDLE),
    (State.IDLE, Event.RUNNING, State.IN_FLIGHT),
    (State.IN_FLIGHT, Event.RUNNING, State.IN_FLIGHT),
    (State.IN_FLIGHT, Event.JOB_DONE, State.IDLE),
    (State.IDLE, Event.LOG, State.IDLE),
    (State.READYING, Event.LOG, State.READYING),
    (State.POLLING, Event.LOG, State.POLLING),
    (State.LINGERING, Event.LOG, State.LINGERING),
    (State.IN_FLIGHT, Event.LOG, State.IN_FLIGHT),
]


def test_cases_cover_the_table():
    """Adding a transition without a row above fails here."""
    assert {(s, e): n for s, e, n in CASES} == TRANSITIONS
    assert len(CASES) == len(TRANSITIONS)


@pytest.mark.parametrize(("state", "event", "expected"), CASES)
def test_each_row_of_the_table(state, event, expected):
    session = Session(state=state, job="j" if state is State.IN_FLIGHT else "", attempt=1)
    assert session.fire(event) is expected
    assert session.state is expected


@pytest.mark.parametrize(
    ("state", "event"),
    [(s, e) for s in State for e in Event if (s, e) not in TRANSITIONS],
)
def test_every_pair_outside_the_table_is_refused_and_changes_nothing(state, event):
    session = Session(state=state, job="j" if state is State.IN_FLIGHT else "", attempt=1)
    before = dataclasses.replace(session)
    with pytest.raises((ProtocolError, RuntimeError)) as info:
        session.fire(event)
    if isinstance(info.value, ProtocolError):  # the runner's fault: only `ready` and `running`
        assert event in (Event.READY, Event.RUNNING) and info.value.code == 1008
    assert session == before


# -- the flags and the decisions ----------------------------------------------------------------

OFFER = Offer("j1", 1, "linux", b"{}", 60.0, 1)


def polling_session() -> Session:
    session = Session()
    session.ready()
    session.wait()
    return session


def test_a_ready_asks_redis_and_ends_a_prior_attempt():
    session = Session()
    session.attached("j0", 2)
    assert session.watched_job() == ("j0", 2)
    assert session.ready() is ReadyPlan.ASK_REDIS
    assert session.prior is None and session.watched_job() is None


def test_a_ready_while_lingering_is_answered_without_redis():
    session = polling_session()
    session.linger()
    assert session.ready() is ReadyPlan.WAIT  # still listed, nothing held
    session = polling_session()
    session.linger()
    session.hold(OFFER)
    assert session.ready() is ReadyPlan.SEND_HELD
    assert session.take_held() == OFFER and session.held_offer is None
    session = polling_session()
    session.linger()
    session.observed(exists=True, current=True, offer=False, polling=False, pubsub=True)
    assert session.ready() is ReadyPlan.ASK_REDIS  # taken out of the idle sets meanwhile


def test_a_bell_during_the_ready_script_is_looked_at_once_the_poll_opens():
    session = Session()
    session.ready()
    action = session.observed(exists=True, current=True, offer=True, polling=False, pubsub=True)
    assert action is Observed.NOTHING
    assert session.wait() is True


def test_a_job_and_attempt_is_never_begun_twice_on_one_connection():
    session = polling_session()
    assert session.begin_delivery(OFFER)
    session.job_done("j1", 1)
    session.ready()
    session.wait()
    assert not session.begin_delivery(OFFER)
    assert session.state is State.POLLING
    assert session.begin_delivery(dataclasses.replace(OFFER, attempt=2))


def test_a_bell_is_sent_only_for_its_generation_while_polling():
    bell = Bell("r1", 5, "j1", 1, OFFER)
    session = polling_session()
    assert session.rung(bell, conn=6) is BellAction.OBSERVE  # an older generation's bell
    assert session.rung(dataclasses.replace(bell, offer=None), conn=5) is BellAction.OBSERVE
    assert session.rung(bell, conn=5) is BellAction.SEND
    session.begin_delivery(OFFER)
    assert session.rung(bell, conn=5) is BellAction.DONE  # sent already (the reconcile first)
    assert Session().rung(bell, conn=5) is BellAction.OBSERVE  # not in a poll
    closed = polling_session()
    closed.close()
    assert closed.rung(bell, conn=5) is BellAction.OBSERVE


@pytest.mark.parametrize(
    ("state", "reply", "expected"),
    [
        (State.POLLING, {"exists": False}, Observed.CLOSE_REVOKED),
        (State.POLLING, {"current": False}, Observed.CLOSE_SUPERSEDED),
        (State.POLLING, {"offer": True}, Observed.SEND),
        (State.POLLING, {"polling": False}, Observed.END_POLL),
        (State.POLLING, {"polling": False, "pubsub": False}, Observed.CHECK_WATCHED),
        (State.POLLING, {}, Observed.CHECK_WATCHED),
        (State.LINGERING, {"offer": True}, Observed.HOLD),
        (State.IN_FLIGHT, {"offer": True}, Observed.CHECK_WATCHED),
        (State.IDLE, {}, Observed.CHECK_WATCHED),
    ],
)
def test_what_an_observe_reply_asks_for(state, reply, expected):
    args = {"exists": True, "current": True, "offer": False, "polling": True, "pubsub": True}
    session = Session(state=state, job="j" if state is State.IN_FLIGHT else "", attempt=1)
    assert session.observed(**(args | reply)) is expected


def test_a_linger_starts_listed_and_holds_nothing():
    session = polling_session()
    session.linger()
    assert (session.listed, session.held_offer) == (True, None)
    session.hold(OFFER)
    session.end_linger()
    assert session.state is State.IDLE and session.held_offer is None


def test_a_stale_poll_number_is_not_the_open_poll():
    session = polling_session()
    assert session.polling(session.poll) and not session.polling(session.poll - 1)
    session.close()
    assert not session.polling(session.poll)
    assert session.close() is False  # closing twice: the second is a no-op


def test_running_is_refused_while_a_poll_is_open():
    session = polling_session()
    with pytest.raises(ProtocolError):
        session.check_running()
    Session().check_running()  # idle: Redis fences it


def test_detach_releases_only_where_a_job_may_be_unsent():
    assert {s for s in State if Session(state=s).releases_on_detach()} == {
        State.POLLING,
        State.LINGERING,
        State.READYING,
    }


# -- `log` (protocol 1.1): never changes the state, stored only where a job may be held ---------


@pytest.mark.parametrize(
    ("state", "stored"),
    [
        (State.IDLE, True),  # reconnected mid-job, before `running`: Redis fences it
        (State.IN_FLIGHT, True),  # claimed or running (rule 10: before `running` is accepted)
        (State.READYING, False),
        (State.POLLING, False),
        (State.LINGERING, False),
    ],
)
def test_a_log_keeps_the_state_and_is_stored_only_where_a_job_may_be_held(state, stored):
    held = state is State.IN_FLIGHT
    session = Session(state=state, job="j" if held else "", attempt=1 if held else 0)
    before = dataclasses.replace(session)
    assert session.log() is stored
    assert session == before  # no flag, no poll number, no job changes
