"""Redis work per matching call, with 1,000 saturated concurrency groups vs without groups.

Straight through the Redis Functions on a private ``redis-server`` (its ``INFO commandstats`` then
counts only this run): for each operation, ``count`` calls are prepared, the statistics reset,
the calls made, and the commands the functions ran (every command but FCALL itself) and FCALL's
microseconds are divided by ``count``. Three operations, each ``none`` (no group) and ``groups``:

- ``ready``: a runner asks and gets the best pending job. ``groups``: the head of the queue is
  ``saturated`` groups' jobs (each group at its limit of 1, with ``backlog`` pending jobs of a
  higher priority than anything else); the job handed out is of a group with room.
- ``submit``: a job submitted while a runner waits, matched in the same call.
- ``finish``: a runner reports `completed`. ``groups``: the group was at its limit with a job
  pending, so the call also hands that job to a waiting runner (the slot goes on at once).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis

from dispatcher import functions as fn
from dispatcher.keys import Keys

SPEC = "bench"
POD = "bench-pod"
PAYLOAD = json.dumps({"command": ["true"]})


def _run(client: Any, call: fn.Call[fn.T]) -> fn.T:
    return fn.run_sync(client, call)


def _submit(client: Any, keys: Keys, group: str = "", priority: int = 0) -> str:
    return _run(client, fn.submit(keys, "", SPEC, PAYLOAD, priority, 3600, 1, group=group))


def _runner(client: Any, keys: Keys, name: str, wait: bool) -> int:
    _run(client, fn.runner_add(keys, name, "h" * 64, [SPEC]))
    conn: int = _run(client, fn.attach(keys, name, POD))["conn"]
    if wait:
        assert _run(client, fn.ready(keys, name, conn, ""))["result"] == "idle"
    return conn


def saturate(client: Any, keys: Keys, groups: int, backlog: int) -> None:
    """``groups`` groups at their limit of 1 (a job claimed by a runner of their own) with
    ``backlog`` pending jobs each, at priority 9: the head of the queue, none of it eligible."""
    pipe = client.pipeline(transaction=False)
    for g in range(groups):
        pipe.fcall(fn.group_set(keys, f"sat{g}", 1).name, 0, keys.namespace, f"sat{g}", "1")
    pipe.execute()
    for g in range(groups):
        conn = _runner(client, keys, f"holder{g}", wait=False)
        job = _submit(client, keys, f"sat{g}", priority=9)
        assert _run(client, fn.ready(keys, f"holder{g}", conn, ""))["job"] == job
        for _ in range(backlog):
            _submit(client, keys, f"sat{g}", priority=9)


def measure(client: Any, count: int, calls: Callable[[], None]) -> dict[str, float]:
    """Reset the statistics, make the calls, return commands and FCALL µs per call."""
    client.config_resetstat()
    calls()
    stats = client.info("commandstats")
    fcall = stats.get("cmdstat_fcall", {"calls": 0, "usec": 0})
    inner = sum(
        int(v["calls"])
        for k, v in stats.items()
        if k not in ("cmdstat_fcall", "cmdstat_info", "cmdstat_config|resetstat")
    )
    return {
        "fcalls": int(fcall["calls"]),
        "commands_per_call": round(inner / count, 2),
        "usec_per_call": round(int(fcall["usec"]) / count, 2),
    }


def op_ready(client: Any, keys: Keys, count: int, grouped: bool) -> dict[str, float]:
    conns = {f"asker{i}": _runner(client, keys, f"asker{i}", wait=False) for i in range(count)}
    for i in range(count):  # each in a group with room (grouped) or none
        _submit(client, keys, f"room{i}" if grouped else "")

    def calls() -> None:
        for name, conn in conns.items():
            assert _run(client, fn.ready(keys, name, conn, ""))["result"] == "job"

    return measure(client, count, calls)


def op_submit(client: Any, keys: Keys, count: int, grouped: bool) -> dict[str, float]:
    for i in range(count):
        _runner(client, keys, f"waiter{i}", wait=True)

    jobs: list[str] = []

    def calls() -> None:
        for i in range(count):
            jobs.append(_submit(client, keys, f"fresh{i}" if grouped else ""))

    work = measure(client, count, calls)
    assert all(client.hget(keys.job(job), "status") == "claimed" for job in jobs)
    return work


def op_finish(client: Any, keys: Keys, count: int, grouped: bool) -> dict[str, float]:
    held: list[tuple[str, str]] = []
    for i in range(count):
        name = f"worker{i}"
        conn = _runner(client, keys, name, wait=False)
        group = f"full{i}" if grouped else ""
        if grouped:
            _run(client, fn.group_set(keys, group, 1))
        job = _submit(client, keys, group)
        assert _run(client, fn.ready(keys, name, conn, ""))["job"] == job
        if grouped:
            _submit(client, keys, group)  # waits for the slot
        held.append((name, job))
    for i in range(count):
        _runner(client, keys, f"spare{i}", wait=True)

    def calls() -> None:
        for name, job in held:
            call = fn.finish(
                keys,
                name,
                job,
                1,
                "completed",
                exit_code=0,
                results=None,
                stdout=None,
                stderr=None,
                error="",
            )
            assert _run(client, call)["result"] == "recorded"

    return measure(client, count, calls)


OPERATIONS = {"ready": op_ready, "submit": op_submit, "finish": op_finish}


def run_all(
    redis_url: str, run_ns: str, groups: int, backlog: int, count: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Every operation, without and with the saturated groups, each in a fresh namespace."""
    client: Any = redis.Redis.from_url(redis_url, decode_responses=True)
    fn.load_library_sync(client)
    out: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for op, measure_op in OPERATIONS.items():
            out[op] = {}
            for kind in ("none", "groups"):
                keys = Keys(f"{run_ns}-{op}-{kind}")
                _run(client, fn.tick(keys, POD, 3_600_000))
                client.hset(keys.config, "start_timeout", 3600)
                if kind == "groups":
                    saturate(client, keys, groups, backlog)
                out[op][kind] = measure_op(client, keys, count, kind == "groups")
                for name in client.scan_iter(match=f"{keys.namespace}:*", count=1000):
                    client.unlink(name)
    finally:
        client.close()
    return out
