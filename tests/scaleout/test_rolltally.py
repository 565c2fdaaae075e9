"""The rolling-restart run's counting (tests/scaleout/rolltally.py), fed by hand."""

from __future__ import annotations

from tests.scaleout.rolltally import (
    Execution,
    Submitted,
    percentile,
    reconnect_seconds,
    tally,
    unreturned,
)

ROLL = (100.0, 200.0)


def test_each_job_processed_once_counts_clean_with_latency_by_submit_phase():
    jobs = [Submitted("a", 50.0, 1), Submitted("b", 150.0, 1), Submitted("c", 250.0, 1)]
    records = {j.job: {"status": "processed", "exit_code": "0"} for j in jobs}
    runs = [
        Execution("a", 1, "r1", 50.5),
        Execution("b", 1, "r2", 150.2),
        Execution("c", 1, "r1", 250.1),
    ]
    result = tally(jobs, records, runs, ROLL)
    assert result.problems() == []
    assert (result.processed, result.executions, result.doubled) == (3, 3, 0)
    assert round(result.latency["before"].p99, 3) == 0.5
    assert round(result.latency["during"].p50, 3) == 0.2
    assert round(result.latency["after"].max, 3) == 0.1


def test_a_second_execution_counts_as_doubled_whatever_the_attempt():
    jobs = [Submitted("a", 150.0, 1)]
    records = {"a": {"status": "processed", "exit_code": "0", "attempt": "2"}}
    runs = [Execution("a", 1, "r1", 150.1), Execution("a", 2, "r2", 190.0)]
    result = tally(jobs, records, runs, ROLL)
    assert result.doubled == 1 and "doubled = 1" in result.problems()
    assert result.latency["during"].max < 0.2  # the first execution is the job's start


def test_a_job_without_final_status_is_lost_and_a_failed_one_failed():
    jobs = [Submitted("a", 1.0, 1), Submitted("b", 1.0, 1), Submitted("c", 1.0, 1)]
    records = {"a": {"status": "running"}, "b": {"status": "failed", "error": "lease expired"}}
    result = tally(jobs, records, [], ROLL)
    assert (result.lost, result.failed, result.processed) == (2, 1, 0)
    assert "processed 0 of 3" in result.problems()


def test_executions_of_other_jobs_are_ignored_and_no_job_is_a_problem():
    result = tally([], {}, [Execution("x", 1, "r1", 1.0)], ROLL)
    assert result.executions == 0 and "no job submitted" in result.problems()


def test_nearest_rank_percentile():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def test_a_runner_whose_last_close_has_no_reconnect_after_it_is_not_back():
    closes = [("r1", 1001, 10.0), ("r2", 1001, 10.0), ("r2", 1001, 30.0)]
    reconnects = [("r1", 10.0, 12.0), ("r2", 10.0, 11.5)]
    assert unreturned(closes, reconnects) == ["r2"]
    assert reconnect_seconds(reconnects).max == 2.0
