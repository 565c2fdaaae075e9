"""The pure half of usage metering: checking a query, the days it reads, folding day hashes into a
report (no Redis: the hashes are given as ``HGETALL`` would return them)."""

from __future__ import annotations

import datetime as dt

import pytest

from dispatcher.errors import InvalidInput
from dispatcher.keys import Keys
from dispatcher.usage import (
    DEFAULT_SPAN_DAYS,
    MAX_SPAN_DAYS,
    UsageQuery,
    usage_plan,
    usage_report,
)
from dispatcher.usage_days import declared_days, utc_today

TODAY = dt.date(2026, 12, 2)


def test_without_dates_the_query_is_the_30_days_up_to_today() -> None:
    query = UsageQuery.build(today=TODAY)
    assert query.until == TODAY
    assert query.since == TODAY - dt.timedelta(days=DEFAULT_SPAN_DAYS - 1)
    assert len(query.days) == DEFAULT_SPAN_DAYS and query.by == "spec"


def test_dates_may_be_dates_iso_text_or_words() -> None:
    query = UsageQuery.build("2026-11-01", dt.date(2026, 11, 30), "group", today=TODAY)
    assert (query.since, query.until, query.by) == (
        dt.date(2026, 11, 1),
        dt.date(2026, 11, 30),
        "group",
    )
    words = UsageQuery.build("yesterday", " Today ", "runner", today=TODAY)
    assert (words.since, words.until) == (dt.date(2026, 12, 1), TODAY)
    assert [d.isoformat() for d in words.days] == ["2026-12-01", "2026-12-02"]
    only_since = UsageQuery.build("2026-12-01", today=TODAY)
    assert only_since.until == TODAY


@pytest.mark.parametrize(
    ("since", "until", "by", "message"),
    [
        ("2026-13-01", None, "spec", "invalid since '2026-13-01'"),
        ("2026-02-30", None, "spec", "invalid since"),
        ("2026-1-1", None, "spec", "invalid since"),
        ("20261201", None, "spec", "invalid since"),
        ("last week", None, "spec", "invalid since"),
        ("", None, "spec", "invalid since"),
        (None, "tomorrow", "spec", "invalid until 'tomorrow'"),
        ("2026-12-02", "2026-12-01", "spec", "since 2026-12-02 is after until 2026-12-01"),
        ("today", "yesterday", "spec", "is after until"),
        ("2020-01-01", "2026-12-01", "spec", f"at most {MAX_SPAN_DAYS} days"),
        (None, None, "org", "invalid by 'org': one of spec, group, runner"),
        (None, None, "", "invalid by"),
    ],
)
def test_bad_queries_are_refused_with_what_is_wrong(
    since: str | None, until: str | None, by: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        UsageQuery.build(since, until, by, today=TODAY)


def test_the_longest_range_is_accepted() -> None:
    last = dt.date(2026, 12, 1)
    first = last - dt.timedelta(days=MAX_SPAN_DAYS - 1)
    assert len(UsageQuery.build(first, last, today=TODAY).days) == MAX_SPAN_DAYS


def test_a_record_call_declares_yesterday_today_and_tomorrow() -> None:
    assert declared_days(dt.date(2026, 12, 31)) == ("2026-12-30", "2026-12-31", "2027-01-01")
    assert declared_days(dt.date(2024, 3, 1)) == ("2024-02-29", "2024-03-01", "2024-03-02")


def test_today_is_the_utc_date() -> None:
    late = dt.datetime(2026, 12, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert utc_today(late) == dt.date(2026, 12, 2)


DAY1 = {
    "ms:spec:linux": "90500",
    "jobs:spec:linux": "2",
    "ms:spec:mac": "1000",
    "jobs:spec:mac": "1",
    "ms:group:org-42": "91000",
    "jobs:group:org-42": "2",
    "ms:group:": "500",
    "jobs:group:": "1",
    "ms:runner:r1": "91500",
    "jobs:runner:r1": "3",
}
DAY3 = {
    b"ms:spec:linux": b"0",  # a job canceled before it started
    b"jobs:spec:linux": b"1",
    b"ms:group:": b"0",
    b"jobs:group:": b"1",
    b"ms:runner:": b"0",
    b"jobs:runner:": b"1",
    b"junk": b"1",  # what the writers never write is left out
    b"ms:spec": b"7",
    b"ms:spec:bad": b"x",
    b"seconds:spec:linux": b"9",
}


def fold(by: str) -> dict[str, object]:
    query = UsageQuery.build("2026-11-29", "2026-12-01", by, today=TODAY)
    return usage_report(query, [("2026-11-29", DAY1), ("2026-11-30", {}), ("2026-12-01", DAY3)])


def test_the_report_lists_days_with_usage_and_the_totals() -> None:
    assert fold("spec") == {
        "since": "2026-11-29",
        "until": "2026-12-01",
        "by": "spec",
        "days": [
            {
                "day": "2026-11-29",
                "usage": [
                    {"name": "linux", "runner_seconds": 90.5, "jobs": 2},
                    {"name": "mac", "runner_seconds": 1.0, "jobs": 1},
                ],
                "runner_seconds": 91.5,
                "jobs": 3,
            },
            {
                "day": "2026-12-01",
                "usage": [{"name": "linux", "runner_seconds": 0.0, "jobs": 1}],
                "runner_seconds": 0.0,
                "jobs": 1,
            },
        ],
        "totals": [
            {"name": "linux", "runner_seconds": 90.5, "jobs": 3},
            {"name": "mac", "runner_seconds": 1.0, "jobs": 1},
        ],
        "runner_seconds": 91.5,
        "jobs": 4,
    }


@pytest.mark.parametrize("by", ["spec", "group", "runner"])
def test_the_totals_agree_whichever_grouping(by: str) -> None:
    report = fold(by)
    assert (report["runner_seconds"], report["jobs"]) == (91.5, 4)


def test_jobs_without_a_group_or_runner_are_named_empty() -> None:
    report = fold("group")
    assert report["totals"] == [
        {"name": "org-42", "runner_seconds": 91.0, "jobs": 2},
        {"name": "", "runner_seconds": 0.5, "jobs": 2},
    ]


def test_nothing_metered_gives_an_empty_report() -> None:
    query = UsageQuery.build(today=TODAY)
    report = usage_report(query, [])
    assert report["days"] == [] and report["totals"] == []
    assert (report["runner_seconds"], report["jobs"]) == (0.0, 0)


def test_the_plan_reads_one_hash_per_day_in_one_batch() -> None:
    keys = Keys("ns")
    query = UsageQuery.build("2026-11-30", "2026-12-01", today=TODAY)
    plan = usage_plan(keys, query)
    batch = next(plan)
    assert batch.commands == [
        ("HGETALL", "ns:usage:2026-11-30"),
        ("HGETALL", "ns:usage:2026-12-01"),
    ]
    with pytest.raises(StopIteration) as done:
        plan.send([{"ms:spec:linux": "1500", "jobs:spec:linux": "1"}, {}])
    assert done.value.value["runner_seconds"] == 1.5
