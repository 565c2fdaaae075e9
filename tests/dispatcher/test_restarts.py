"""The restart back-off of `dispatcher up`'s children, fed with exits and times (no clock)."""

from __future__ import annotations

import pytest

from dispatcher.restarts import RestartBackoff


def test_quick_crashes_double_the_delay_up_to_the_cap():
    backoff = RestartBackoff(first=0.5, factor=2, cap=4, stable_after=30)
    delays = []
    now = 0.0
    for _ in range(6):
        backoff.started(now)
        now += 1.0  # each run lasts one second
        delay = backoff.exited(now)
        delays.append(delay)
        now += delay
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.restarts == 6


def test_a_run_longer_than_stable_after_starts_the_sequence_again():
    backoff = RestartBackoff(first=0.5, factor=2, cap=10, stable_after=30)
    backoff.started(0)
    assert backoff.exited(1) == 0.5
    backoff.started(2)
    assert backoff.exited(3) == 1.0
    backoff.started(4)
    assert backoff.exited(4 + 30) == 0.5  # ran 30 s: healthy, so the delay is reset
    backoff.started(35)
    assert backoff.exited(36) == 1.0


def test_an_exit_just_short_of_stable_after_keeps_growing():
    backoff = RestartBackoff(first=1, factor=3, cap=100, stable_after=10)
    backoff.started(0)
    assert backoff.exited(9.99) == 1
    backoff.started(10)
    assert backoff.exited(19.99) == 3


def test_an_exit_without_a_recorded_start_still_gets_a_delay():
    backoff = RestartBackoff(first=2, cap=2)
    assert backoff.exited(100) == 2
    assert backoff.exited(100) == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"first": 0}, {"first": 5, "cap": 1}, {"factor": 0.5}, {"stable_after": -1}],
)
def test_impossible_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="restart back-off"):
        RestartBackoff(**kwargs)
