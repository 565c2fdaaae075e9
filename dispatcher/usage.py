"""Usage metering: runner-seconds and job counts per UTC day, by spec, group or runner.

Theory of operation. The result writers' ``record`` function (``lua/dispatch.lua``,
``meter_usage``) adds each final job's running time to the usage hash of the UTC day the job
finished, in the same atomic call as the compare-and-set that makes the outcome recorded, so a
batch processed twice, or two writers racing on one entry, meter a job once. Running time is
``finished - started`` of the job's final attempt (0 when that attempt never started: canceled
while pending or claimed, failed with ``not started``); such a job still counts as one job.

Each day's hash (``Keys.usage``) holds ``ms:<by>:<name>`` and ``jobs:<by>:<name>`` for ``by`` in
spec, group and runner (a job without a group or a runner counts under the name ''). Every job is
counted under each of the three, so the totals agree whichever ``by`` is asked for. The hash
expires ``DISPATCHER_USAGE_RETENTION_DAYS`` after its day ends.

Nothing here does I/O: ``UsageQuery`` checks a request, ``usage_plan`` is the read as a plan
(``dispatcher.lookup``: run by the sync and the async client alike), ``usage_report`` folds the
hashes into the report ``dispatcher usage --json`` prints.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.errors import InvalidInput
from dispatcher.keys import Keys
from dispatcher.lookup import Batch, Plan
from dispatcher.records import text
from dispatcher.usage_days import day_name, utc_today

BY = ("spec", "group", "runner")
DEFAULT_SPAN_DAYS = 30  # without --since: the 30 days up to --until
MAX_SPAN_DAYS = 1000  # one query reads one hash per day: bounded

DateLike = dt.date | str | None


def parse_day(value: DateLike, name: str, today: dt.date) -> dt.date | None:
    """A date given as a ``date``, ``YYYY-MM-DD``, ``today`` or ``yesterday``; None stays None."""
    if value is None or isinstance(value, dt.date):
        return value
    word = value.strip().lower()
    if word == "today":
        return today
    if word == "yesterday":
        return today - dt.timedelta(days=1)
    try:
        if len(word) != 10:
            raise ValueError(word)
        return dt.date.fromisoformat(word)
    except ValueError:
        raise InvalidInput(
            f"invalid {name} {value!r}: a date YYYY-MM-DD (UTC), 'today' or 'yesterday'"
        ) from None


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """A checked request: the UTC days ``since`` to ``until`` (both included), grouped ``by``."""

    since: dt.date
    until: dt.date
    by: str = "spec"

    @classmethod
    def build(
        cls,
        since: DateLike = None,
        until: DateLike = None,
        by: str = "spec",
        *,
        today: dt.date | None = None,
    ) -> UsageQuery:
        """Check and complete a request; ``InvalidInput`` says what is wrong. Defaults: until
        today (UTC), since ``DEFAULT_SPAN_DAYS`` - 1 days before until."""
        today = today or utc_today()
        if by not in BY:
            raise InvalidInput(f"invalid by {by!r}: one of {', '.join(BY)}")
        last = parse_day(until, "until", today) or today
        first = parse_day(since, "since", today) or last - dt.timedelta(days=DEFAULT_SPAN_DAYS - 1)
        if first > last:
            raise InvalidInput(f"invalid range: since {first} is after until {last}")
        if (last - first).days + 1 > MAX_SPAN_DAYS:
            raise InvalidInput(f"invalid range: at most {MAX_SPAN_DAYS} days at once")
        return cls(first, last, by)

    @property
    def days(self) -> list[dt.date]:
        span = (self.until - self.since).days + 1
        return [self.since + dt.timedelta(days=d) for d in range(span)]


def usage_plan(keys: Keys, query: UsageQuery) -> Plan:
    """Read the query's days (one pipeline of HGETALL) and return ``usage_report``'s report."""
    days = query.days
    raws = yield Batch([("HGETALL", keys.usage(day_name(day))) for day in days])
    return usage_report(query, zip((day_name(d) for d in days), raws, strict=True))


def usage_by(raw: Mapping[Any, Any], by: str) -> dict[str, list[int]]:
    """One day's hash -> {name: [ms, jobs]} for ``by`` (other fields and junk are skipped)."""
    rows: dict[str, list[int]] = {}
    for field, value in raw.items():
        metric, _, rest = str(text(field)).partition(":")
        field_by, sep, name = rest.partition(":")
        if field_by != by or not sep or metric not in ("ms", "jobs"):
            continue
        try:
            amount = int(text(value) or 0)
        except ValueError:
            continue
        rows.setdefault(name, [0, 0])[0 if metric == "ms" else 1] += amount
    return rows


def _rows(by_name: Mapping[str, list[int]]) -> list[dict[str, Any]]:
    ordered = sorted(by_name.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))
    return [_figures({"name": name}, ms, jobs) for name, (ms, jobs) in ordered]


def _figures(into: dict[str, Any], ms: int, jobs: int) -> dict[str, Any]:
    into["runner_seconds"] = round(ms / 1000, 3)
    into["jobs"] = jobs
    return into


def usage_report(
    query: UsageQuery, days: Iterable[tuple[str, Mapping[Any, Any]]]
) -> dict[str, Any]:
    """The report: the range, then each day that has usage (its rows by name, largest first, and
    its sums), then the rows and sums over the whole range. ``runner_seconds`` has ms precision;
    a name '' is the jobs without one (no group; never given to a runner)."""
    totals: dict[str, list[int]] = {}
    listed: list[dict[str, Any]] = []
    for day, raw in days:
        rows = usage_by(raw or {}, query.by)
        if not rows:
            continue
        for name, (ms, jobs) in rows.items():
            sums = totals.setdefault(name, [0, 0])
            sums[0] += ms
            sums[1] += jobs
        ms, jobs = (sum(v[i] for v in rows.values()) for i in (0, 1))
        listed.append(_figures({"day": day, "usage": _rows(rows)}, ms, jobs))
    report: dict[str, Any] = {
        "since": day_name(query.since),
        "until": day_name(query.until),
        "by": query.by,
        "days": listed,
        "totals": _rows(totals),
    }
    ms, jobs = (sum(v[i] for v in totals.values()) for i in (0, 1))
    return _figures(report, ms, jobs)
