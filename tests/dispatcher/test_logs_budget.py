"""The per-connection `log` rate (``LogBudget``), fed sizes and time without a loop."""

from __future__ import annotations

import pytest

from dispatcher.logs_budget import LogBudget

RATE = 64 * 1024
CHUNK = 16 * 1024


def test_a_burst_of_one_seconds_worth_is_read_at_once():
    budget = LogBudget()
    assert [budget.charge(CHUNK, 0.0, RATE) for _ in range(4)] == [0.0] * 4


def test_past_the_burst_each_chunk_waits_its_share_and_waiting_pays_the_debt():
    budget, now = LogBudget(), 0.0
    for _ in range(4):
        budget.charge(CHUNK, now, RATE)
    waits = []
    for _ in range(8):
        wait = budget.charge(CHUNK, now, RATE)
        waits.append(wait)
        now += wait
    assert waits == [pytest.approx(0.25)] * 8  # 16 KiB at 64 KiB/s, never more, never less
    assert now == pytest.approx(2.0)


def test_an_idle_connection_gets_its_burst_back_but_no_more():
    budget = LogBudget()
    budget.charge(RATE, 0.0, RATE)
    assert budget.charge(CHUNK, 100.0, RATE) == 0.0
    assert budget.tokens == RATE - CHUNK


def test_rate_zero_is_no_limit():
    budget = LogBudget()
    assert all(budget.charge(10**9, 0.0, 0) == 0.0 for _ in range(3))
