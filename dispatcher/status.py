"""A snapshot of a namespace for operators (`dispatcher status`), read from what the keys hold.

Counts of jobs per status are not stored anywhere (that would cost a write per transition), so the
snapshot reports what the keys allow: pending jobs and idle runners per spec, runners by state, live
pods, leases in flight, the monotonic counters, and the results queue.

The reads are written once as a plan: a generator that yields batches of commands and receives their
replies, so the sync and the async client run the same logic, each with one pipeline per batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Sequence
from typing import Any

import redis
import redis.asyncio
from rq.queue import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

from dispatcher.keys import Keys
from dispatcher.records import rfc3339, text

Command = tuple[str | int, ...]
Plan = Generator[list[Command], list[Any], dict[str, Any]]


def status_plan(keys: Keys) -> Plan:
    """Two round trips: what exists (specs, runners, the clock), then everything counted."""
    clock, specs_raw, runners_raw = yield [
        ("TIME",),
        ("SMEMBERS", keys.specs),
        ("SMEMBERS", keys.runners),
    ]
    now_ms = int(clock[0]) * 1000 + int(clock[1]) // 1000
    specs, runners = sorted(map(text, specs_raw)), sorted(map(text, runners_raw))
    queue = keys.results_queue
    replies = yield [
        *[("ZCARD", keys.pending(spec)) for spec in specs],
        *[("ZCARD", keys.idle(spec)) for spec in specs],
        *[("HGET", keys.runner(name), "state") for name in runners],
        ("ZRANGEBYSCORE", keys.pods, now_ms, "+inf"),
        ("ZCARD", keys.leases),
        ("HGETALL", keys.stats),
        ("LLEN", Queue.redis_queue_namespace_prefix + queue),
        ("ZCARD", ScheduledJobRegistry.key_template.format(queue)),
        ("ZCARD", FailedJobRegistry.key_template.format(queue)),
        ("ZCARD", keys.outbox),
        ("ZCOUNT", keys.outbox, "-inf", now_ms),
    ]
    n = len(specs)
    pending, idle, states = replies[:n], replies[n : 2 * n], replies[2 * n : 2 * n + len(runners)]
    pods, leases, counters, queued, scheduled, failed, outbox, due = replies[2 * n + len(runners) :]
    by_state = Counter(text(state) if state else "offline" for state in states)
    return {
        "namespace": keys.namespace,
        "time": rfc3339(now_ms),
        "specs": {
            spec: {"pending": int(p), "idle_runners": int(i)}
            for spec, p, i in zip(specs, pending, idle, strict=True)
        },
        "runners": {
            "total": len(runners),
            "idle": by_state["idle"],
            "busy": by_state["busy"],
            "offline": by_state["offline"],
        },
        "pods": sorted(map(text, pods)),
        "leases": int(leases),
        "counters": {text(k): int(v) for k, v in sorted(counters.items())},
        "results": {
            "queue": queue,
            "outbox": int(outbox),  # outcomes not yet recorded by a writer
            "outbox_due": int(due),  # of which not in a batch now (waiting for a pump)
            "queued": int(queued),  # rq batches waiting for a writer
            "retrying": int(scheduled),
            "failed": int(failed),
        },
    }


def read_status(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Run the plan on a sync client."""
    plan = status_plan(keys)
    batch = next(plan)
    while True:
        pipe = client.pipeline(transaction=False)
        _queue(pipe, batch)
        try:
            batch = plan.send(pipe.execute())
        except StopIteration as done:
            return dict(done.value)


async def read_status_async(client: redis.asyncio.Redis, keys: Keys) -> dict[str, Any]:
    """Run the plan on an asyncio client."""
    plan = status_plan(keys)
    batch = next(plan)
    while True:
        pipe = client.pipeline(transaction=False)
        _queue(pipe, batch)
        try:
            batch = plan.send(await pipe.execute())
        except StopIteration as done:
            return dict(done.value)


def _queue(
    pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline, batch: Sequence[Command]
) -> None:
    for command in batch:
        pipe.execute_command(*command)
