"""Read-only look-ups for producers and operators: job id prefixes, job listings, runners.

Nothing here writes to Redis, and nothing here needs an index of its own: every answer comes from
keys the functions keep anyway (see docs/redis-schema.md, "Finding jobs"):

- every **pending** job is in its spec's queue ``{ns}:pending:{spec}`` or, when it names a
  concurrency group, in its group's queue ``{ns}:group:{group}:pending:{spec}`` (the member
  carries the submission sequence number, so queues give the age order without reading a record);
- every **claimed or running** job is in ``{ns}:leases``;
- a **final** job (completed, processed, failed, canceled) is found through the event stream
  ``{ns}:events``, which is capped (about 10,000 entries, a few per job): the recent ones only.
  An older record is still readable by its whole id until its retention ends.

Resolving an id prefix also runs a bounded ``SCAN`` over the namespace's job keys
(``SCAN_ROUNDS`` calls of ``COUNT SCAN_COUNT``), so an older job is found too wherever the
keyspace is small enough; the recent jobs are looked at first and always completely.

The reads are written once as plans (generators that yield batches of commands and receive their
replies), so the sync and the async client run the same logic, one pipeline per batch.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from dispatcher.errors import InvalidInput, NotFound
from dispatcher.keys import Keys
from dispatcher.records import rfc3339, runner_record, text
from dispatcher.submission import is_job_id

STATUSES = ("pending", "claimed", "running", "completed", "processed", "failed", "canceled")
IN_FLIGHT = frozenset({"claimed", "running"})
FINAL = frozenset({"completed", "processed", "failed", "canceled"})
STREAM_READ = 20_000  # the stream is trimmed to ~10,000 entries; this bounds one read of it
SCAN_COUNT = 1000
SCAN_ROUNDS = 100  # at most 100,000 keys examined per prefix
MAX_LIMIT = 10_000
SHOWN_MATCHES = 10
PREFIX_RE = re.compile(r"^[0-9A-Fa-f-]{1,36}$")
# the control fields of a listing (never the payload or the outputs, which may be large)
LIST_FIELDS = (
    "id",
    "spec",
    "status",
    "runner",
    "attempt",
    "priority",
    "created",
    "finished",
    "error",
    "exit_code",
    "qmember",
)

Command = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """Commands for one round trip; ``atomic`` runs them in MULTI/EXEC (one consistent view)."""

    commands: list[Command]
    atomic: bool = False


Plan = Generator[Batch, list[Any], Any]


class AmbiguousJobId(InvalidInput):
    """An id prefix that matches more than one job."""


# -- plans ------------------------------------------------------------------------------------


def _queues(keys: Keys, specs: Sequence[str], groups: Sequence[Any]) -> list[str]:
    """Every pending queue of ``specs``: the specs' own and each group's of each spec."""
    names = sorted(map(text, groups))
    return [keys.pending(s) for s in specs] + [
        keys.group_pending(g, s) for g in names for s in specs
    ]


def _recent_sources(
    keys: Keys, queues: Sequence[str], *, pending: bool, leases: bool, stream: bool
) -> Batch:
    commands: list[Command] = []
    if pending:
        commands += [("ZRANGE", queue, 0, -1) for queue in queues]
    if leases:
        commands.append(("ZRANGE", keys.leases, 0, -1))
    if stream:
        commands.append(("XREVRANGE", keys.events, "+", "-", "COUNT", STREAM_READ))
    return Batch(commands, atomic=True)


def _split_sources(
    replies: list[Any], n_pending: int, *, leases: bool, stream: bool
) -> tuple[dict[str, int], list[str]]:
    """(pending id -> sequence number, other ids newest event first, without duplicates)."""
    pending: dict[str, int] = {}
    for members in replies[:n_pending]:
        for member in members:
            seq, _, job_id = text(member).partition(":")
            pending[job_id] = int(seq)
    others: dict[str, None] = {}
    rest = replies[n_pending:]
    if leases:
        others.update((text(job_id), None) for job_id in rest.pop(0))
    if stream:
        for _entry_id, fields in rest.pop(0):
            fields = fields or {}
            job_id = text(fields.get("job") or fields.get(b"job") or "")
            if job_id:
                others[job_id] = None
    return pending, [job_id for job_id in others if job_id not in pending]


def _glob(prefix: str) -> str:
    """A SCAN pattern matching ``prefix`` in either case (ids from other producers may be upper
    case); a prefix holds only hex digits and '-', none of them special in a glob."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in prefix)


def resolve_plan(keys: Keys, prefix: str) -> Plan:
    """The one job id starting with ``prefix``; ``NotFound`` or ``AmbiguousJobId`` otherwise."""
    if is_job_id(prefix):
        return prefix
    if not PREFIX_RE.match(prefix):
        raise NotFound(f"no such job: {prefix}")
    wanted = prefix.lower()
    specs, groups = yield Batch([("SMEMBERS", keys.specs), ("SMEMBERS", keys.groups)])
    queues = _queues(keys, sorted(map(text, specs)), groups)
    replies = yield _recent_sources(keys, queues, pending=True, leases=True, stream=True)
    pending, others = _split_sources(replies, len(queues), leases=True, stream=True)
    candidates = sorted(
        {job_id for job_id in [*pending, *others] if job_id.lower().startswith(wanted)}
    )
    matches: set[str] = set()
    if candidates:  # records of final jobs may have expired since their events
        exists = yield Batch([("EXISTS", keys.job(job_id)) for job_id in candidates])
        matches = {job_id for job_id, n in zip(candidates, exists, strict=True) if int(n)}
    complete = True
    if len(matches) < 2:  # two recent matches are ambiguous already; else look further
        pattern = keys.job(_glob(prefix)) + "*"
        cursor: int | str = 0
        for _ in range(SCAN_ROUNDS):
            ((cursor, found),) = yield Batch(
                [("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)]
            )
            matches.update(text(key).rsplit(":", 1)[1] for key in found)
            if int(cursor) == 0:
                break
        else:
            complete = False
    if len(matches) == 1:
        return matches.pop()
    if not matches:
        hint = (
            "" if complete else " (among recent jobs and the first keys scanned; give more digits)"
        )
        raise NotFound(f"no such job: {prefix}{hint}")
    shown = sorted(matches)[:SHOWN_MATCHES]
    more = f" and {len(matches) - len(shown)} more" if len(matches) > len(shown) else ""
    raise AmbiguousJobId(
        f"job id prefix {prefix} is ambiguous: it matches {', '.join(shown)}{more}"
    )


def check_listing(status: str | None, limit: int) -> None:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"unknown status {status!r} (one of: {', '.join(STATUSES)})")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}")


def jobs_plan(
    keys: Keys,
    *,
    status: str | None = None,
    spec: str | None = None,
    runner: str | None = None,
    limit: int = 20,
) -> Plan:
    """Job summaries, newest submission first, filtered by the job's current status, spec and
    runner (of the current or last attempt); at most ``limit``."""
    check_listing(status, limit)
    want_pending = status in (None, "pending") and not runner
    want_leases = status is None or status in IN_FLIGHT
    want_stream = status is None or status in FINAL
    queues: list[str] = []
    if want_pending:
        raw_specs, groups = yield Batch([("SMEMBERS", keys.specs), ("SMEMBERS", keys.groups)])
        specs = [spec] if spec is not None else sorted(map(text, raw_specs))
        queues = _queues(keys, specs, groups)
    sources = _recent_sources(
        keys, queues, pending=want_pending, leases=want_leases, stream=want_stream
    )
    replies = yield sources
    pending, others = _split_sources(replies, len(queues), leases=want_leases, stream=want_stream)
    # records of the jobs not in a queue (their sequence numbers are in the records): bounded by
    # the leases (about one per runner) and the stream's cap
    rows = yield Batch([("HMGET", keys.job(job_id), *LIST_FIELDS) for job_id in others])
    known: dict[str, dict[str, str]] = {}
    order: list[tuple[int, str]] = [(seq, job_id) for job_id, seq in pending.items()]
    for job_id, values in zip(others, rows, strict=True):
        record = _row(values)
        if record is not None:
            known[job_id] = record
            order.append((_seq(record), job_id))
    order.sort(reverse=True)
    out: list[dict[str, Any]] = []
    chunk = max(limit, 100)
    for start in range(0, len(order), chunk):
        window = [job_id for _, job_id in order[start : start + chunk]]
        missing = [job_id for job_id in window if job_id not in known]
        if missing:
            fetched = yield Batch([("HMGET", keys.job(j), *LIST_FIELDS) for j in missing])
            for job_id, values in zip(missing, fetched, strict=True):
                record = _row(values)
                if record is not None:
                    known[job_id] = record
        for job_id in window:
            record = known.get(job_id)
            if record is None or not _wanted(record, status, spec, runner):
                continue
            out.append(summary(record))
            if len(out) == limit:
                return out
    return out


def _row(values: Sequence[Any]) -> dict[str, str] | None:
    record = {
        name: text(v) if v is not None else "" for name, v in zip(LIST_FIELDS, values, strict=True)
    }
    return record if record["status"] else None  # expired or never there


def _seq(record: dict[str, str]) -> int:
    seq, _, _ = record["qmember"].partition(":")
    return int(seq) if seq.isdigit() else 0


def _wanted(
    record: dict[str, str], status: str | None, spec: str | None, runner: str | None
) -> bool:
    return (
        (status is None or record["status"] == status)
        and (spec is None or record["spec"] == spec)
        and (runner is None or record["runner"] == runner)
    )


def summary(record: dict[str, str]) -> dict[str, Any]:
    """One line of `dispatcher jobs --json`: the job record's control fields."""
    return {
        "id": record["id"],
        "spec": record["spec"],
        "status": record["status"],
        "runner": record["runner"] or None,
        "attempt": int(record["attempt"] or 0),
        "priority": int(record["priority"] or 0),
        "created": rfc3339(record["created"]),
        "finished": rfc3339(record["finished"]),
        "error": record["error"] or None,
        "exit_code": int(record["exit_code"]) if record["exit_code"] else None,
    }


def runners_plan(keys: Keys) -> Plan:
    """Every registered runner's record, sorted by name (as ``dispatcher runner list`` shows)."""
    (names,) = yield Batch([("SMEMBERS", keys.runners)])
    ordered = sorted(map(text, names))
    raws = yield Batch([("HGETALL", keys.runner(name)) for name in ordered])
    # a runner revoked between the two round trips leaves an empty hash: skip it
    return [runner_record(raw) for raw in raws if raw]


# -- running a plan ---------------------------------------------------------------------------


def run_plan(client: redis.Redis, plan: Plan) -> Any:
    """Run ``plan`` on a sync client; its return value."""
    try:
        batch = next(plan)
        while True:
            replies: list[Any] = []
            if batch.commands:
                pipe = client.pipeline(transaction=batch.atomic)
                _queue(pipe, batch)
                replies = pipe.execute()
            batch = plan.send(replies)
    except StopIteration as done:
        return done.value


async def run_plan_async(client: redis.asyncio.Redis, plan: Plan) -> Any:
    """Run ``plan`` on an asyncio client; its return value."""
    try:
        batch = next(plan)
        while True:
            replies: list[Any] = []
            if batch.commands:
                apipe = client.pipeline(transaction=batch.atomic)
                _queue(apipe, batch)
                replies = await apipe.execute()
            batch = plan.send(replies)
    except StopIteration as done:
        return done.value


def _queue(pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline, batch: Batch) -> None:
    for command in batch.commands:
        pipe.execute_command(*command)
