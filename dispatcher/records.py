"""Public records (job, runner) built from the raw Redis hashes: pure functions, no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, overload

from dispatcher.attempts import attempts

FINAL_STATUSES = frozenset({"processed", "failed", "canceled"})


# The last whole second formatted: every `job` frame carries its job's creation time, and jobs
# created in the same second share the text up to the milliseconds (issue 11: the datetime
# round trip was ~3% of the pod's CPU in the throughput scenario).
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def rfc3339(ms: str | int | None) -> str | None:
    """Milliseconds since the epoch (Redis server clock) as RFC 3339 UTC, or None."""
    global _last_second
    if ms is None or ms == "":
        return None
    second, milli = divmod(int(ms), 1000)
    cached = _last_second
    if cached[0] != second:
        moment = datetime.fromtimestamp(second, tz=UTC)
        cached = _last_second = (second, moment.isoformat(timespec="seconds")[:-6])
    return f"{cached[1]}.{milli:03d}Z"


@overload
def text(value: bytes | str) -> str: ...
@overload
def text(value: None) -> None: ...
def text(value: bytes | str | None) -> str | None:
    """A Redis reply value as text (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw: dict[bytes | str, bytes | str]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def _json_or_none(text: str | None) -> Any:
    return None if text is None or text == "" else json.loads(text)


def _number(text: str | None) -> int | float:
    value = float(text or 0)
    return int(value) if value.is_integer() else value


def _int_or_none(text: str | None) -> int | None:
    return None if text is None or text == "" else int(text)


def job_record(raw: dict[Any, Any]) -> dict[str, Any]:
    """The job record as `dispatcher job --json` prints it and `Client.get` returns it."""
    h = _decode(raw)
    timeout = float(h["timeout"])
    return {
        "id": h["id"],
        "spec": h["spec"],
        "status": h["status"],
        "attempt": int(h.get("attempt") or 0),
        "runner": h.get("runner") or None,
        "priority": int(h["priority"]),
        "timeout": int(timeout) if timeout.is_integer() else timeout,
        "max_attempts": int(h.get("max_attempts") or 1),
        "group": h.get("group") or None,
        "retries": int(h.get("retries") or 0),
        "retry_delay": _number(h.get("retry_delay")),
        "retries_used": int(h.get("retries_used") or 0),
        "retry_at": rfc3339(h.get("retry_at")),
        "attempts": attempts(h.get("history")),
        "payload": _json_or_none(h.get("payload")),
        "error": h.get("error") or None,
        "exit_code": _int_or_none(h.get("exit_code")),
        "results": _json_or_none(h.get("results")),
        "created": rfc3339(h.get("created")),
        "claimed": rfc3339(h.get("claimed")),
        "started": rfc3339(h.get("started")),
        "finished": rfc3339(h.get("finished")),
        "stdout": h.get("stdout"),
        "stderr": h.get("stderr"),
    }


def runner_record(raw: dict[Any, Any]) -> dict[str, Any]:
    """The runner record as `dispatcher runner list --json` prints it (no token hash)."""
    h = _decode(raw)
    info = _json_or_none(h.get("info"))
    return {
        "name": h["name"],
        "specs": json.loads(h.get("specs") or "[]"),
        "state": h.get("state") or "offline",
        "pod": h.get("pod") or None,
        "job": h.get("job") or None,
        "attempt": _int_or_none(h.get("attempt")),
        "last_seen": rfc3339(h.get("last_seen")),
        "paused": h.get("paused") == "1",
        "ephemeral": h.get("ephemeral") == "1",
        "version": info.get("version") if isinstance(info, dict) else None,
        "info": info,
    }
