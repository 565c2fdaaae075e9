"""The floor scenario's evaluation and Markdown, fed figures directly (pure, no processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import floor, floormd, floorreport
from bench.scenarios import FULL, Size


def lat(
    p50: float, p99: float, submitted: int = 200, lost: int = 0, dup: int = 0
) -> dict[str, Any]:
    return {
        "latency_ms": {"count": submitted - lost, "p50": p50, "p90": p99, "p99": p99, "max": p99},
        "submitted": submitted,
        "delivered": submitted - lost,
        "lost": lost,
        "duplicates": dup,
        "unknown": 0,
        "cpu_percent": {"machine": 80.0, "others": 20.0},
    }


def idle(commands: float, fcall: float) -> dict[str, Any]:
    redis = {"commands_per_s": commands, "fcall_per_s": fcall, "redis_cpu_percent": 1.0}
    return {"redis": redis, "pod_cpu_percent_total": 2.0, "contaminated": False}


def result(**changes: Any) -> dict[str, Any]:
    p = floor.plan(floor.FULL["floor"], quick=False)
    r: dict[str, Any] = {
        "plan": {
            "small": {"runners": p.small.runners, "rate": p.small.rate, "duration": 20.0},
            "headline": {"runners": 1000, "pods": 2, "rate": 100.0, "duration": 20.0},
            "idle": {"runners": 1000, "duration": 30.0},
            "throughput": {"pods": 2},
            "connmem": {"runners": 10_000},
        },
        "poll_interval_s": 1.0,
        "runs": {
            "small": {
                "pubsub": lat(0.3, 0.9),
                "poll": lat(66.0, 600.0),
                "poll_lockstep": lat(480.0, 990.0),
                "rq": lat(2.0, 4.0),
                "chain": {"latency_ms": {"p50": 0.8, "p99": 1.6}, "rate": 10.0, "count": 200},
            },
            "headline": {
                "pubsub": lat(0.9, 2.0),
                "poll": lat(7.0, 300.0),
                "poll_lockstep": lat(30.0, 400.0),
                "rq": lat(2.1, 5.0),
                "chain": {"latency_ms": {"p50": 0.7, "p99": 1.4}, "rate": 100.0, "count": 2000},
            },
            "idle": {"pubsub": idle(14.0, 2.0), "poll": idle(16_000.0, 1_000.0)},
            "throughput": {"acknowledged_per_s": 2100.0},
            "connmem": {"rss_per_connection_kib": 19.5, "source": "bench.connmem.connmem"},
        },
        "errors": {},
        "loadavg": {"start": [0.5, 0.4, 0.3], "end": [1.5, 1.0, 0.6]},
    }
    r.update(changes)
    return r


def targeted(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["figure"]: r for r in rows if r["target"] != "—"}


def test_the_full_plan_is_the_issues_loads() -> None:
    p = floor.plan(floor.FULL["floor"], quick=False)
    assert (p.small.runners, p.small.rate, p.small.pods) == (10, 10.0, 2)
    assert (p.headline.runners, p.headline.rate, p.headline.pods) == (1000, 100.0, 2)
    assert p.idle.runners == 1000 and p.idle.writers == 0
    assert p.throughput == FULL["throughput"] and p.throughput.pods == 2
    assert p.connmem.runners == 10_000 and p.connmem.pods == 1


def test_overriding_the_headline_runners_moves_idle_but_not_small() -> None:
    p = floor.plan(Size(runners=50, pods=2, duration=5, rate=40), quick=False)
    assert (p.headline.runners, p.idle.runners, p.small.runners) == (50, 50, 10)
    assert p.small.rate == 4.0


@pytest.mark.parametrize(("runners", "expected_ms"), [(1, 500.0), (10, 66.967), (1000, 0.693)])
def test_poll_model_median_falls_as_runners_are_added(runners: int, expected_ms: float) -> None:
    assert floorreport.poll_wait_p50_ms(runners, 1.0) == pytest.approx(expected_ms, abs=0.001)


@pytest.mark.parametrize(("runners", "interval"), [(0, 1.0), (-3, 1.0), (10, 0.0), (10, -1.0)])
def test_poll_model_refuses_nonsense(runners: int, interval: float) -> None:
    assert floorreport.poll_wait_p50_ms(runners, interval) is None


def test_every_target_is_judged_from_the_figures() -> None:
    rows = targeted(floorreport.evaluate(result()))
    verdicts = {figure: row["met"] for figure, row in rows.items()}
    assert len(verdicts) == 7 + 8  # seven targets, eight exactly-once checks
    assert all(verdicts.values()), [f for f, ok in verdicts.items() if not ok]
    ratio = rows["p50 ÷ plain rq SimpleWorker p50, same load"]["value"]
    assert ratio == pytest.approx(0.9 / 2.1, abs=0.01)
    assert rows["10 runners, 10 jobs/s: poll p50 ÷ pub/sub p50"]["value"] == 220.0


def test_the_lifecycle_row_says_what_each_lifecycle_cost_in_cpu() -> None:
    r = result()
    r["runs"]["throughput"]["cpu_percent"] = {
        "pod0": 30.0,
        "pod1": 40.0,
        "redis": 60.0,
        "machine": 190.0,
        "sim0": 20.0,
    }
    row = targeted(floorreport.evaluate(r))["acknowledged full lifecycles/s, 2 pods"]
    # 2,100 jobs/s: 190 % of a core is 1.9 s of CPU per s, 0.905 ms per job
    assert row["note"] == "CPU per lifecycle: machine 0.905 ms, Redis 0.286 ms, pods 0.333 ms"
    assert (
        targeted(floorreport.evaluate(result()))["acknowledged full lifecycles/s, 2 pods"]["note"]
        == ""
    )  # no CPU figures: no note


def test_missed_targets_are_misses() -> None:
    r = result()
    r["runs"]["headline"]["pubsub"] = lat(1.6, 3.0)
    r["runs"]["idle"]["pubsub"] = idle(20.0, 2.0)
    verdicts = {f: row["met"] for f, row in targeted(floorreport.evaluate(r)).items()}
    assert verdicts["submit → `job` p50, 1,000 runners / 2 pods / 100 jobs/s"] is False
    assert verdicts["submit → `job` p99, 1,000 runners / 2 pods / 100 jobs/s"] is False
    assert verdicts["p50 ÷ plain rq SimpleWorker p50, same load"] is False
    assert verdicts["1,000 idle runners: Redis commands/s poll ÷ pub/sub"] is False


def test_a_lost_or_duplicated_job_fails_its_check() -> None:
    r = result()
    r["runs"]["small"]["rq"] = lat(2.0, 4.0, lost=1)
    r["runs"]["headline"]["poll"] = lat(7.0, 300.0, dup=2)
    once = {f: row for f, row in targeted(floorreport.evaluate(r)).items() if "lost / dup" in f}
    assert once["lost / dup, small rq"]["met"] is False
    assert once["lost / dup, headline poll"]["met"] is False
    assert once["lost / dup, headline poll"]["value"] == "0 / 2 of 200"
    assert once["lost / dup, small pubsub"]["met"] is True


def test_an_unmeasured_figure_is_never_a_pass() -> None:
    r = result(runs={}, errors={"headline/rq": "ChildFailed: boom"})
    rows = floorreport.evaluate(r)
    assert all(row["met"] is None for row in rows)
    assert all(row["value"] is None for row in targeted(rows).values())
    assert floorreport.evaluate({})  # an empty result still gives every row, as n/a


def test_a_zero_or_missing_denominator_gives_no_ratio() -> None:
    r = result()
    r["runs"]["idle"]["pubsub"] = idle(0.0, 0.0)
    r["runs"]["headline"]["rq"] = {"latency_ms": {"count": 0}}
    k = floorreport.ratios(r)
    assert k["idle_commands_poll_over_pubsub"] is None
    assert k["headline_p50_pubsub_over_rq"] is None


def test_contaminated_idle_counts_are_flagged() -> None:
    r = result()
    r["runs"]["idle"]["pubsub"]["contaminated"] = True
    row = targeted(floorreport.evaluate(r))["1,000 idle runners: Redis commands/s poll ÷ pub/sub"]
    assert "--private-redis" in row["note"]


def data_for(r: dict[str, Any]) -> dict[str, Any]:
    env = {
        "cpu_count": 2,
        "cpu_model": "test cpu",
        "python": "3.11",
        "redis_server": "Redis",
        "redis_version": "7.0.15",
        "private_redis": True,
        "git_commit": "0123456789abcdef",
        "git_dirty": False,
    }
    return {
        "run_id": "20260101-000000-abcd",
        "started_iso": "2026-01-01 00:00:00 UTC",
        "command": "python -m bench --scenario floor",
        "environment": env,
        "scenarios": {"floor": r},
        "targets": floorreport.evaluate(r),
        "files": {"markdown": "bench/results/floor-20260101-000000-abcd.md"},
    }


def test_report_has_definitions_tables_and_the_restated_baseline() -> None:
    text = floormd.render(data_for(result()))
    assert "| measure | measured | target | met? |" in text
    assert "| p50 ÷ plain rq SimpleWorker p50, same load | 0.430 x (rq p50 2.100 ms; its " in text
    for name, _ in floorreport.DEFINITIONS:
        assert f"**{name}**" in text
    # the model beside the measured p50, at independent phases and connected together
    assert "| 10 | 67.0 ms | 66.0 ms | 480.0 ms | 10.0 | — |" in text
    assert "| 1,000 | 0.693 ms | 7.000 ms | 30.0 ms | 1,000.0 | 1,000.0 |" in text
    assert "0.50 / 0.40 / 0.30" in text and "1.50 / 1.00 / 0.60" in text


def test_report_names_a_failed_step() -> None:
    r = result(errors={"headline/rq": "ChildFailed: rq-worker exited"})
    del r["runs"]["headline"]["rq"]
    text = floormd.render(data_for(r))
    assert "| plain rq | not measured (ChildFailed: rq-worker exited) |" in text
    assert "Step headline/rq FAILED: ChildFailed: rq-worker exited" in text


def test_summary_block_is_replaced_and_notes_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "SUMMARY.md"
    path.write_text("# Benchmark summary\n\nfirst\n\n## Notes kept across runs\n\nmine\n")
    floormd.write_summary(path, data_for(result()))
    floormd.write_summary(path, data_for(result()))
    text = path.read_text()
    assert text.count(floormd.START) == text.count(floormd.END) == 1
    assert text.index("first") < text.index(floormd.START) < text.index("## Notes kept")
    assert text.endswith("mine\n")


def test_the_lockstep_ratio_is_shown_beside_the_honest_one() -> None:
    rows = {r["figure"]: r for r in floorreport.evaluate(result())}
    assert rows["(a) p50 poll, connected together ÷ pub/sub"]["value"] == 1600.0
    assert rows["(a) 10 runners: poll, connected together p50 / p99"]["value"] == "480.0 / 990.0"
    assert rows["(a) p50 poll, connected together ÷ pub/sub"]["met"] is None


def test_the_bare_chain_is_shown_beside_the_latencies_and_is_no_system() -> None:
    rows = floorreport.evaluate(result())
    by_figure = {r["figure"]: r for r in rows}
    assert by_figure["(b) 1,000 runners: bare chain (no dispatcher) p50 / p99"]["value"] == (
        "0.700 / 1.400"
    )
    p50_row = next(r for r in rows if r["figure"].startswith("submit → `job` p50"))
    assert "bare chain at this rate p50 0.700 ms" in p50_row["note"]
    assert not [r for r in rows if r["figure"].startswith("lost / dup") and "chain" in r["figure"]]
