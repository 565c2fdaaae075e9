"""A job's attempt history as the record shows it (pure, no I/O).

The Lua library logs how each attempt ended in the job hash's ``history`` field, a JSON list of
at most 100 entries (``log_attempt`` in ``lua/dispatch.lua``), times in ms of the Redis clock.
``attempts`` turns it into the ``attempts`` list of ``dispatcher job ID --json`` and
``Client.get``: one dict per ended attempt, oldest first, with RFC 3339 times. An attempt still
in flight is not in it (the record's own ``attempt``, ``runner`` and ``status`` show that one).

Statuses of an entry: ``completed``, ``failed``, ``canceled`` (as the job's), and ``lost``: the
server ended the attempt and queued the job again (the runner never sent ``running`` in time, or
its lease expired). ``retried`` is true on a ``failed`` that was queued again (a retry was left).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def _time(ms: Any) -> str | None:
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def attempt_entry(raw: dict[str, Any]) -> dict[str, Any]:
    """One logged attempt in its public shape."""
    return {
        "attempt": _int(raw.get("attempt")),
        "runner": raw.get("runner") or None,
        "status": raw.get("status"),
        "exit_code": _int(raw.get("exit_code")),
        "error": raw.get("error") or None,
        "retried": bool(raw.get("retried")),
        "claimed": _time(raw.get("claimed")),
        "started": _time(raw.get("started")),
        "finished": _time(raw.get("finished")),
    }


def attempts(history: str | None) -> list[dict[str, Any]]:
    """The ``history`` field's entries, oldest first ([] when absent or unreadable)."""
    if not history:
        return []
    try:
        entries = json.loads(history)
    except ValueError:
        return []
    if not isinstance(entries, list):  # the Lua side never writes an empty list ('{}')
        return []
    return [attempt_entry(e) for e in entries if isinstance(e, dict)]
