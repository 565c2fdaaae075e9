"""Helpers of the concurrency-group and pause tests: runners and jobs straight through the Redis
Function library (the contract every pod and producer calls), on the tests' real Redis."""

from __future__ import annotations

import json
from typing import Any

from dispatcher import functions as fn
from dispatcher.keys import Keys

SPEC = "linux"
POD = "pod-a"
PAYLOAD = json.dumps({"command": ["true"]})

RClient = Any  # the tests' sync client decodes replies to str


def run(rclient: RClient, call: fn.Call[fn.T]) -> fn.T:
    return fn.run_sync(rclient, call)


def live_pod(rclient: RClient, keys: Keys, pod: str = POD) -> None:
    run(rclient, fn.tick(keys, pod, 600_000))


def connect(rclient: RClient, keys: Keys, name: str, specs: list[str] | None = None) -> int:
    """Register ``name`` and attach it to POD; returns its connection generation."""
    run(rclient, fn.runner_add(keys, name, "h" * 64, specs or [SPEC]))
    conn: int = run(rclient, fn.attach(keys, name, POD))["conn"]
    return conn


def ready(rclient: RClient, keys: Keys, name: str, conn: int) -> dict[str, Any]:
    return run(rclient, fn.ready(keys, name, conn, ""))


def submit(
    rclient: RClient,
    keys: Keys,
    group: str = "",
    *,
    spec: str = SPEC,
    priority: int = 0,
    job_id: str = "",
) -> str:
    call = fn.submit(keys, job_id, spec, PAYLOAD, priority, 3600, 1, group=group)
    return run(rclient, call)


def finish(rclient: RClient, keys: Keys, name: str, job: str, status: str = "completed") -> None:
    attempt = int(rclient.hget(keys.job(job), "attempt"))
    call = fn.finish(
        keys,
        name,
        job,
        attempt,
        status,
        exit_code=0,
        results=None,
        stdout=None,
        stderr=None,
        error="",
    )
    assert run(rclient, call)["result"] == "recorded"


def status(rclient: RClient, keys: Keys, job: str) -> str:
    return str(rclient.hget(keys.job(job), "status"))


def runner_of(rclient: RClient, keys: Keys, job: str) -> str:
    return str(rclient.hget(keys.job(job), "runner") or "")


def in_flight(rclient: RClient, keys: Keys, jobs: list[str]) -> list[str]:
    return [j for j in jobs if status(rclient, keys, j) in ("claimed", "running")]


def set_limit(rclient: RClient, keys: Keys, group: str, limit: int | None) -> dict[str, Any]:
    return run(rclient, fn.group_set(keys, group, limit))
