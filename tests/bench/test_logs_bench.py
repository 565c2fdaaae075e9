"""bench.logs' pure parts: latencies split by window, the summary and its table."""

from __future__ import annotations

import argparse

from bench.common import JobSeen
from bench.logs import Window, markdown, report, split_latencies


def test_latencies_go_to_the_window_their_submit_fell_in_and_gaps_are_left_out():
    windows = [Window("quiet", 0.0, 10.0), Window("noisy", 11.0, 21.0)]
    jobs = [
        JobSeen("a", 1, arrived=5.002, latency=0.002),  # submitted at 5.0: quiet
        JobSeen("b", 1, arrived=10.5, latency=0.001),  # in the gap: left out
        JobSeen("c", 1, arrived=12.003, latency=0.003),  # noisy
        JobSeen("d", 1, arrived=13.0, latency=None),  # no t0: left out
    ]
    assert split_latencies(jobs, windows) == {"quiet": [0.002], "noisy": [0.003]}


def test_report_gives_ratios_and_per_kind_rates():
    windows = [
        Window("quiet", 0.0, 10.0, pod_cpu=1.0, redis_cpu=0.5),
        Window("noisy", 11.0, 21.0, pod_cpu=2.0, redis_cpu=1.0, noisy_bytes=20_000_000),
    ]
    args = argparse.Namespace(window=10)
    data = report(args, windows, {"quiet": [0.002] * 10, "noisy": [0.003] * 10}, [10_000])
    assert data["ratio_noisy_over_quiet"] == {"p50": 1.5, "p99": 1.5}
    assert data["per_window_kind"]["noisy"]["noisy_mb_per_s"] == 2.0
    assert data["per_window_kind"]["quiet"]["pod_cpu_per_s"] == 0.1
    assert "p50 1.5, p99 1.5" in markdown(data)
