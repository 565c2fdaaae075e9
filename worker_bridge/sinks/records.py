"""The final job record a sink receives, read from Redis in one round trip per batch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from dispatcher.keys import Keys
from dispatcher.records import rfc3339, text

FIELDS = (
    "id",
    "spec",
    "status",
    "attempt",
    "runner",
    "priority",
    "exit_code",
    "error",
    "cancel_reason",
    "created",
    "claimed",
    "started",
    "finished",
    "processed",
    "results",
    "stdout",
    "stderr",
)
TAIL_CHARS = 64 * 1024  # stdout/stderr kept per job by sinks (the end of the output)
TIMES = ("created", "claimed", "started", "finished", "processed")


@dataclass(frozen=True, slots=True)
class JobRecord:
    namespace: str
    entry: str  # '<job>:<attempt>' of the box entry this record answers
    fields: dict[str, str]

    @property
    def job_id(self) -> str:
        return self.fields.get("id") or self.entry.rpartition(":")[0]

    @property
    def attempt(self) -> int:
        return int(self.fields.get("attempt") or 0)

    def time(self, name: str) -> datetime | None:
        raw = self.fields.get(name) or ""
        return datetime.fromtimestamp(int(raw) / 1000, tz=UTC) if raw.isdigit() else None

    def exit_code(self) -> int | None:
        raw = self.fields.get("exit_code") or ""
        try:
            return int(raw)
        except ValueError:
            return None

    def results(self) -> Any:
        raw = self.fields.get("results") or ""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def tail(self, name: str) -> str:
        return (self.fields.get(name) or "")[-TAIL_CHARS:]

    def document(self) -> dict[str, Any]:
        """The JSON a webhook receives: the job's final state, times in RFC 3339."""
        f = self.fields
        doc: dict[str, Any] = {
            "namespace": self.namespace,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "status": f.get("status", ""),
            "spec": f.get("spec", ""),
            "runner": f.get("runner", ""),
            "exit_code": self.exit_code(),
            "error": f.get("error", ""),
            "cancel_reason": f.get("cancel_reason", ""),
            "results": self.results(),
            "stdout": self.tail("stdout"),
            "stderr": self.tail("stderr"),
        }
        for name in TIMES:
            raw = f.get(name) or ""
            doc[name] = rfc3339(int(raw)) if raw.isdigit() else None
        return doc


def load_records(
    conn: redis.Redis, keys: Keys, sink: str, entries: list[str]
) -> tuple[list[JobRecord], list[str]]:
    """In one pipeline: the records of those ``entries`` still in the sink's box (an entry not
    there was delivered by an earlier try of this batch, or by another batch), and the entries
    whose job no longer exists."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.zmscore(keys.sinkbox(sink), entries)
        for entry in entries:
            pipe.hmget(keys.job(entry.rpartition(":")[0]), list(FIELDS))
        scores, *rows = pipe.execute()
    found: list[JobRecord] = []
    gone: list[str] = []
    for entry, score, values in zip(entries, scores, rows, strict=True):
        if score is None:
            continue
        if values[0] is None:
            gone.append(entry)
            continue
        fields = {name: text(v) for name, v in zip(FIELDS, values, strict=True) if v is not None}
        found.append(JobRecord(keys.namespace, entry, fields))
    return found, gone
