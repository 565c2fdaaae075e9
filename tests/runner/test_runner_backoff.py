"""Reconnect back-off: bounds, growth, reset, determinism (no sleeping, no clock)."""

from __future__ import annotations

import random

import pytest

from runner.backoff import Backoff, Jitter


def delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


@pytest.mark.parametrize("jitter", ["full", "decorrelated"])
def test_delays_stay_within_the_cap(jitter: Jitter) -> None:
    backoff = Backoff(jitter=jitter, rng=random.Random(3))
    assert all(0.0 <= d <= 60.0 for d in delays(backoff, 1000))


def test_full_jitter_ceiling_doubles_each_attempt() -> None:
    backoff = Backoff(jitter="full", rng=random.Random(5))
    for attempt, delay in enumerate(delays(backoff, 10)):
        assert delay <= min(60.0, 2.0**attempt)


def test_decorrelated_jitter_never_goes_below_base_and_grows_at_most_threefold() -> None:
    backoff = Backoff(jitter="decorrelated", rng=random.Random(11))
    previous = 1.0
    for delay in delays(backoff, 50):
        assert 1.0 <= delay <= min(60.0, previous * 3)
        previous = delay


@pytest.mark.parametrize("jitter", ["full", "decorrelated"])
def test_delays_grow_then_reach_the_cap(jitter: Jitter) -> None:
    backoff = Backoff(jitter=jitter, rng=random.Random(1))
    early, late = delays(backoff, 3), delays(backoff, 200)
    assert max(early) < 9.0
    assert max(late) > 45.0  # many draws near the 60 s ceiling


@pytest.mark.parametrize("jitter", ["full", "decorrelated"])
def test_reset_starts_over(jitter: Jitter) -> None:
    backoff = Backoff(jitter=jitter, rng=random.Random(2))
    delays(backoff, 30)
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() <= 3.0


def test_same_seed_same_delays() -> None:
    first = delays(Backoff(rng=random.Random(42)), 20)
    assert first == delays(Backoff(rng=random.Random(42)), 20)


def test_many_attempts_do_not_overflow() -> None:
    backoff = Backoff(jitter="full", rng=random.Random(0))
    assert delays(backoff, 5000)[-1] <= 60.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 60.0), (-1.0, 60.0), (10.0, 5.0)])
def test_bad_bounds_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base=base, cap=cap)
