"""What the live dashboard shows, read from Redis state only (no pod needed): pure, no I/O.

``dashboard_plan`` reads the fleet snapshot (``dispatcher.fleetmetrics.fleet_plan``), then the
runner records, the jobs in flight (the leases), the tail of ``{ns}:events`` and the records of the
jobs those events name, each capped, in two more round trips. ``dispatcher.dashboard`` runs it.
"""

from __future__ import annotations

import json
from typing import Any

from dispatcher import fleetmetrics
from dispatcher.keys import Keys
from dispatcher.records import rfc3339, text

MAX_RUNNERS = 500
MAX_IN_FLIGHT = 200
MAX_EVENTS = 50
RUNNER_FIELDS = ("state", "specs", "pod", "job", "attempt", "info", "idle_since", "last_seen")
JOB_FIELDS = ("spec", "status", "runner", "attempt", "created", "claimed", "started", "finished")


def _fields(names: tuple[str, ...], values: list[Any]) -> dict[str, str]:
    return {n: str(text(v)) for n, v in zip(names, values, strict=True) if v not in (None, b"", "")}


def _events(raw: Any) -> list[dict[str, str]]:
    out = []
    for entry_id, fields in raw or []:
        if isinstance(fields, list):  # an unparsed reply: [k, v, k, v, ...]
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        event = {str(text(k)): str(text(v)) for k, v in fields.items()}
        event["id"] = str(text(entry_id))
        out.append(event)
    return out


def _seconds_since(now_ms: int, ms: str | None) -> float | None:
    return round(max(0.0, (now_ms - int(ms)) / 1000), 3) if ms else None


def dashboard_plan(keys: Keys) -> fleetmetrics.Plan:
    """The dashboard's whole state as one JSON-ready dict."""
    fleet = yield from fleetmetrics.fleet_plan(keys)
    now = int(fleet["now_ms"])
    names_raw, leased, events_raw = yield [
        ("SMEMBERS", keys.runners),
        ("ZRANGE", keys.leases, 0, MAX_IN_FLIGHT - 1),
        ("XREVRANGE", keys.events, "+", "-", "COUNT", MAX_EVENTS),
    ]
    names = sorted(map(str, map(text, names_raw)))[:MAX_RUNNERS]
    in_flight = [str(text(j)) for j in leased]
    events = _events(events_raw)
    recent = list(dict.fromkeys(e["job"] for e in events if e.get("job")))
    replies = yield [
        *[("HMGET", keys.runner(n), *RUNNER_FIELDS) for n in names],
        *[("HMGET", keys.job(j), *JOB_FIELDS) for j in [*in_flight, *recent]],
    ]
    runners = []
    for name, values in zip(names, replies, strict=False):
        row = _fields(RUNNER_FIELDS, values)
        info = json.loads(row.pop("info", "{}") or "{}")
        since = row.get("idle_since") if row.get("state") == "idle" else row.get("last_seen")
        runners.append(
            {
                "name": name,
                "state": row.get("state", "offline"),
                "specs": json.loads(row.get("specs", "[]")),
                "pod": row.get("pod", ""),
                "job": row.get("job", ""),
                "version": info.get("version", "") if isinstance(info, dict) else "",
                "for_seconds": _seconds_since(now, since),
            }
        )
    job_ids, job_replies = [*in_flight, *recent], replies[len(names) :]
    jobs = [
        _job_row(now, j, _fields(JOB_FIELDS, v)) for j, v in zip(job_ids, job_replies, strict=True)
    ]
    return {
        "namespace": keys.namespace,
        "time": rfc3339(now),
        "specs": fleet["specs"],
        "runner_states": fleetmetrics.runner_states(fleet),
        "runners_registered": fleet["runners_registered"],
        "runners": runners,
        "pods": [{"pod": p, "runners": n} for p, n in fleet["pods"].items()],
        "in_flight": [j for j in jobs[: len(in_flight)] if j["status"]],
        "recent": [j for j in jobs[len(in_flight) :] if j["status"]],
        "leases": fleet["leases"],
        "results": fleet["results"],
        "sinks": fleet["sinks"],
        "counters": fleet["counters"],
        "events": events,
    }


def _job_row(now: int, job_id: str, row: dict[str, str]) -> dict[str, Any]:
    start = row.get("started") or row.get("claimed") or row.get("created")
    end = row.get("finished")
    duration = (int(end) - int(start)) / 1000 if end and start else _seconds_since(now, start)
    return {
        "id": job_id,
        "spec": row.get("spec", ""),
        "status": row.get("status", ""),
        "runner": row.get("runner", ""),
        "attempt": int(row.get("attempt", "0")),
        "created": rfc3339(row.get("created")),
        "seconds": duration,
    }
