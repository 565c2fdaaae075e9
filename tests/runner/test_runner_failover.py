"""The failover policy over several dispatcher URLs: fed inputs and time, no loop, no socket.

Delays are compared with a twin ``Backoff`` seeded alike: the policy must hand out the twin's
delays, one per level, in order.
"""

from __future__ import annotations

import random

import pytest

from dispatch_protocol.messages import NoJob
from runner.backoff import Backoff
from runner.events import Connect, Connected, ConnectFailed, ConnectionLost, MessageReceived, Tick
from runner.failover import ROTATE_CLOSE_CODES, Failover, should_rotate
from runner.machine import RunnerMachine
from tests.runner.runner_machine_helpers import CONFIG

A, B, C = "ws://a/ch", "ws://b/ch", "ws://c/ch"
HEALTHY = 30.0
REFUSED = ConnectFailed("ConnectionRefusedError")


def backoff(seed: int = 5) -> Backoff:
    return Backoff(base=1.0, cap=60.0, rng=random.Random(seed))


def policy(*urls: str, seed: int = 5, start: int | None = 0) -> Failover:
    return Failover(urls, backoff(seed), healthy_after=HEALTHY, start=start)


def draws(n: int, seed: int = 5) -> list[float]:
    twin = backoff(seed)
    return [twin.next_delay() for _ in range(n)]


def fail(p: Failover, now: float = 0.0) -> float:
    """One refused attempt; returns the delay the machine would be given."""
    p.observe(REFUSED, now)
    return p.next_delay()


def session(p: Failover, start: float, end: float, code: int | None) -> float:
    p.observe(Connected(), start)
    p.observe(ConnectionLost(code=code), end)
    return p.next_delay()


# -- which URL --------------------------------------------------------------------------------


def test_a_failed_connect_moves_to_the_next_url_and_wraps_around() -> None:
    p = policy(A, B, C)
    seen = [p.url]
    for _ in range(3):
        fail(p)
        seen.append(p.url)
    assert seen == [A, B, C, A]


def test_the_first_url_is_picked_at_random_from_the_backoffs_generator() -> None:
    firsts = {policy(A, B, C, seed=seed, start=None).url for seed in range(30)}
    assert firsts == {A, B, C}  # a fleet given the same list spreads over it
    again = {seed: policy(A, B, C, seed=seed, start=None).url for seed in range(5)}
    assert again == {seed: policy(A, B, C, seed=seed, start=None).url for seed in range(5)}


@pytest.mark.parametrize("code", [None, 1001, 1006, 1011, 1012, 1013, 1014])
def test_a_pod_going_away_or_broken_sends_the_next_attempt_elsewhere(code: int | None) -> None:
    p = policy(A, B)
    session(p, 0.0, 100.0, code)
    assert p.url == B
    assert should_rotate(code)


@pytest.mark.parametrize("code", [1000, 1003, 1007, 1008, 1009, 4001, 4002])
def test_other_close_codes_keep_the_url(code: int) -> None:
    """Revoked (4001) and superseded (4002) keep their meaning in the machine; a protocol error
    would be the same on every pod."""
    p = policy(A, B)
    session(p, 0.0, 100.0, code)
    assert p.url == A
    assert not should_rotate(code) and code not in ROTATE_CLOSE_CODES


def test_a_single_url_is_always_the_one() -> None:
    p = policy(A)
    fail(p)
    session(p, 1.0, 2.0, 1001)
    assert p.url == A


# -- how long to wait -------------------------------------------------------------------------


def test_the_backoff_grows_only_after_a_whole_round_of_urls_failed() -> None:
    p = policy(A, B, C)
    delays = [fail(p, float(t)) for t in range(7)]
    d1, d2, d3 = draws(3)
    assert delays == [d1, d1, d2, d2, d2, d3, d3]
    assert d1 < d2 < d3  # this seed grows at every draw


def test_with_one_url_every_failure_draws_the_next_longer_delay() -> None:
    p = policy(A)
    assert [fail(p) for _ in range(5)] == draws(5)


def test_a_healthy_session_resets_the_backoff_and_the_count() -> None:
    p = policy(A, B)
    for _ in range(4):
        fail(p)
    assert p.failures == 4
    delay = session(p, 10.0, 10.0 + HEALTHY, 1001)
    assert (p.failures, p.url) == (0, B)
    assert 1.0 <= delay <= 3.0 < draws(3)[2]  # a reset back-off's first delay: base..3 * base
    assert fail(p, 50.0) == delay  # still the first level: one URL of the round is left


def test_a_short_session_counts_as_a_failure() -> None:
    """A pod that accepts the connection and drops it at once must not make the runner spin."""
    p = policy(A, B)
    delays = [session(p, float(t), t + 0.5, 1011) for t in range(5)]
    d1, d2, d3 = draws(3)
    assert delays == [d1, d2, d2, d3, d3]
    assert p.failures == 5


def test_a_short_session_in_which_the_dispatcher_answered_is_healthy() -> None:
    """An answer (here `no_job`) shows the pod works end to end: a crash right after it is the
    pod's, not a sign of one that drops every connection."""
    p = policy(A, B)
    for _ in range(4):
        fail(p)
    p.observe(Connected(), 10.0)
    p.observe(MessageReceived(NoJob()), 10.5)
    p.observe(ConnectionLost(code=None), 11.0)
    assert 1.0 <= p.next_delay() <= 3.0  # a reset back-off's first delay
    assert (p.failures, p.url) == (0, B)


def test_an_answer_on_an_earlier_connection_does_not_count_for_the_next() -> None:
    p = policy(A, B)
    p.observe(Connected(), 0.0)
    p.observe(MessageReceived(NoJob()), 0.5)
    p.observe(ConnectionLost(code=1001), 1.0)
    session(p, 2.0, 2.5, 1011)  # connected again, dropped before any answer
    assert p.failures == 1


def test_a_short_session_that_keeps_its_url_still_counts() -> None:
    p = policy(A, B)
    session(p, 0.0, 1.0, 4002)
    assert (p.url, p.failures) == (A, 1)


def test_connecting_alone_does_not_reset_reset_is_a_no_op() -> None:
    p = policy(A, B)
    for _ in range(2):
        fail(p)
    p.observe(Connected(), 5.0)
    p.reset()  # what the machine calls on every Connected
    assert p.failures == 2
    p.observe(ConnectionLost(code=1001), 6.0)
    assert p.next_delay() == draws(2)[1]  # the third failure: level 1, as before


def test_a_session_the_runner_gave_up_on_ends_with_the_delay_request() -> None:
    """The machine closes a connection itself when no answer comes in time and asks for a delay
    in the same step: no ConnectionLost comes. The time is the one of the last input."""
    p = policy(A, B)
    p.observe(Connected(), 0.0)
    p.observe(Tick(), HEALTHY + 15.0)  # the poll deadline passed
    assert p.next_delay() == draws(1)[0]
    assert (p.url, p.failures) == (B, 0)  # a long session: healthy, but the pod did not answer


def test_a_lost_connection_after_it_was_already_counted_changes_nothing() -> None:
    p = policy(A, B)
    session(p, 0.0, 1.0, None)
    p.observe(ConnectionLost(code=1001), 2.0)  # no session open: nothing to count
    assert (p.url, p.failures) == (B, 1)


def test_other_inputs_only_move_time() -> None:
    p = policy(A, B)
    p.observe(Tick(), 99.0)
    assert (p.url, p.failures) == (A, 0)


def test_cap_is_the_backoffs() -> None:
    assert policy(A, B).cap == 60.0


@pytest.mark.parametrize(
    ("urls", "healthy_after", "message"),
    [((), 1.0, "at least one"), ((A, A), 1.0, "twice"), ((A,), -1.0, "healthy_after")],
)
def test_bad_arguments_are_refused(
    urls: tuple[str, ...], healthy_after: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Failover(urls, healthy_after=healthy_after)


# -- with the machine, as the driver composes them ----------------------------------------------


def test_the_machine_reconnects_to_the_other_url_after_the_pods_1001() -> None:
    p = policy(A, B)
    machine = RunnerMachine(CONFIG, backoff=p)

    def feed(event: Connected | ConnectionLost | Tick, now: float) -> list[object]:
        p.observe(event, now)  # what Agent._handle does
        return list(machine.handle(event, now))

    assert machine.start() == [Connect()] and p.url == A
    feed(Connected(), 0.0)
    feed(ConnectionLost(code=1001, reason="dispatcher pod shutting down"), 60.0)
    deadline = machine.next_deadline()
    assert deadline == 60.0 + draws(1)[0]
    assert feed(Tick(), deadline) == [Connect()] and p.url == B


def test_the_machine_waits_the_cap_after_4002_on_the_same_url() -> None:
    p = policy(A, B)
    machine = RunnerMachine(CONFIG, backoff=p)
    machine.start()
    for event, now in ((Connected(), 0.0), (ConnectionLost(4002, "superseded"), 5.0)):
        p.observe(event, now)
        machine.handle(event, now)
    assert (machine.next_deadline(), p.url) == (65.0, A)
