"""The UTC days usage is kept by (``{ns}:usage:<YYYY-MM-DD>``) and their retention: what the
writers' ``record`` call needs to declare its usage keys, apart from the report (``usage``), so
the function builders import nothing else of usage metering."""

from __future__ import annotations

import datetime as dt

DEFAULT_RETENTION_DAYS = 400  # DISPATCHER_USAGE_RETENTION_DAYS


def day_name(day: dt.date) -> str:
    """The ``YYYY-MM-DD`` a usage key is named with."""
    return day.isoformat()


def utc_today(now: dt.datetime | None = None) -> dt.date:
    """Today's UTC date (of ``now`` when given)."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).date()


def declared_days(today: dt.date) -> tuple[str, ...]:
    """The usage hashes a ``record`` call declares: yesterday, today and tomorrow of the caller's
    UTC clock, so a job that finished moments ago, on the Redis server's clock, is among them
    whichever side of midnight either clock is."""
    return tuple(day_name(today + dt.timedelta(days=d)) for d in (-1, 0, 1))
