"""Helpers of the pod integration tests: producer calls, record snapshots, runner flows.

Producers go straight through the Redis Function library (``dispatcher.functions``), the contract
any producer can FCALL; the tests then read the job and runner records back from Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from dispatcher import functions
from dispatcher.keys import Keys
from tests.podkit import RawRunner

SPEC = "linux"

# The tests' sync client (``rclient``) decodes replies to str; redis-py's annotations cannot say
# so, hence Any.
RClient = Any

# Fields of a runner record that a connect or disconnect legitimately rewrites.
CONNECTION_FIELDS = frozenset({"pod", "conn", "last_seen", "polling", "state", "idle_since"})


# -- producer side ----------------------------------------------------------------------------


def submit(
    rclient: RClient,
    keys: Keys,
    spec: str = SPEC,
    payload: Any = None,
    *,
    priority: int = 0,
    timeout: float = 3600,
    max_attempts: int = 1,
) -> str:
    body = json.dumps({"command": ["true"]} if payload is None else payload)
    return functions.run_sync(
        rclient, functions.submit(keys, "", spec, body, priority, timeout, max_attempts)
    )


async def submit_async(
    aclient: redis.asyncio.Redis,
    keys: Keys,
    spec: str = SPEC,
    payload: Any = None,
    *,
    priority: int = 0,
    timeout: float = 3600,
    max_attempts: int = 1,
) -> str:
    body = json.dumps({"command": ["true"]} if payload is None else payload)
    return await functions.run(
        aclient, functions.submit(keys, "", spec, body, priority, timeout, max_attempts)
    )


def cancel(rclient: RClient, keys: Keys, job_id: str) -> bool:
    return functions.run_sync(rclient, functions.cancel(keys, job_id))


def revoke(rclient: RClient, keys: Keys, name: str) -> None:
    functions.run_sync(rclient, functions.runner_revoke(keys, name))


# -- records ----------------------------------------------------------------------------------


def job_rec(rclient: RClient, keys: Keys, job_id: str) -> dict[str, str]:
    return dict(rclient.hgetall(keys.job(job_id)))


def runner_rec(rclient: RClient, keys: Keys, name: str) -> dict[str, str]:
    return dict(rclient.hgetall(keys.runner(name)))


def runner_core(rclient: RClient, keys: Keys, name: str) -> dict[str, str]:
    """The runner record without the fields a (dis)connection rewrites."""
    return {k: v for k, v in runner_rec(rclient, keys, name).items() if k not in CONNECTION_FIELDS}


def lease(rclient: RClient, keys: Keys, job_id: str) -> float | None:
    score = rclient.zscore(keys.leases, job_id)
    return None if score is None else float(score)


def pending_ids(rclient: RClient, keys: Keys, spec: str = SPEC) -> list[str]:
    return [m.split(":", 1)[1] for m in rclient.zrange(keys.pending(spec), 0, -1)]


def idle_runners(rclient: RClient, keys: Keys, spec: str = SPEC) -> list[str]:
    return list(rclient.zrange(keys.idle(spec), 0, -1))


def job_events(rclient: RClient, keys: Keys, job_id: str) -> list[dict[str, str]]:
    return [fields for _id, fields in rclient.xrange(keys.events) if fields.get("job") == job_id]


def queued_results(rclient: RClient, keys: Keys) -> list[str]:
    """Outcomes waiting for a result writer: the results outbox, '<job id>:<attempt>' each
    (an entry stays there, whether or not a pump has put it in an rq batch, until a writer
    records it; no writer runs in these tests)."""
    return list(rclient.zrange(keys.outbox, 0, -1))


def state_of(rclient: RClient, keys: Keys, job_id: str, runner: str) -> dict[str, Any]:
    """Everything a refused or fenced message must leave untouched."""
    return {
        "job": job_rec(rclient, keys, job_id),
        "runner": runner_core(rclient, keys, runner),
        "lease": lease(rclient, keys, job_id),
        "pending": pending_ids(rclient, keys),
        "events": len(job_events(rclient, keys, job_id)),
        "results": queued_results(rclient, keys),
    }


def new_job_id() -> str:
    return str(uuid.uuid4())


# -- waiting ----------------------------------------------------------------------------------


async def eventually(
    check: Callable[[], bool], timeout: float = 3.0, interval: float = 0.02, what: str = "condition"
) -> float:
    """Wait until ``check()`` holds; return the seconds it took."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(interval)


def is_waiting(rclient: RClient, keys: Keys, name: str, spec: str = SPEC) -> bool:
    """``name`` waits in a long poll: in the idle set of ``spec``, its record says polling=1."""
    return (
        rclient.zscore(keys.idle(spec), name) is not None
        and rclient.hget(keys.runner(name), "polling") == "1"
    )


async def until_waiting(
    rclient: RClient, keys: Keys, name: str, spec: str = SPEC, timeout: float = 5.0
) -> None:
    """Wait until the `ready` of ``name`` has put it in the idle set of ``spec`` (not a sleep)."""
    await eventually(
        lambda: is_waiting(rclient, keys, name, spec), timeout, what=f"{name} waiting for {spec}"
    )


async def until_pod(
    rclient: RClient, keys: Keys, name: str, pod_id: str, timeout: float = 5.0
) -> None:
    """Wait until the record of ``name`` names ``pod_id`` ('' once it is detached)."""
    await eventually(
        lambda: runner_rec(rclient, keys, name).get("pod") == pod_id,
        timeout,
        what=f"{name} attached to pod {pod_id!r}",
    )


# -- runner flows -----------------------------------------------------------------------------


async def ready_and_waiting(
    runner: RawRunner, rclient: RClient, keys: Keys, poll_timeout: int = 10, spec: str = SPEC
) -> None:
    """``ready``, then wait until the runner waits in the idle set of ``spec``."""
    await runner.send("ready", poll_timeout=poll_timeout)
    await until_waiting(rclient, keys, runner.name, spec)


async def take_job(
    runner: RawRunner, poll_timeout: int = 5, timeout: float = 5.0
) -> dict[str, Any]:
    """``ready`` and the `job` it is answered with."""
    await runner.send("ready", poll_timeout=poll_timeout)
    return await runner.expect("job", timeout)


async def expect_ack(runner: RawRunner, job_id: str, of: str, timeout: float = 5.0) -> None:
    message = await runner.recv(timeout)
    assert message == {"event": "ack", "job": job_id, "of": of}, message


async def start_job(runner: RawRunner, job: dict[str, Any]) -> None:
    await runner.send("running", job=job["job"], attempt=job["attempt"])
    await expect_ack(runner, job["job"], "running")


async def complete(
    runner: RawRunner, job: dict[str, Any], exit_code: int = 0, results: Any = None
) -> None:
    await runner.send(
        "completed", job=job["job"], attempt=job["attempt"], exit_code=exit_code, results=results
    )
    await expect_ack(runner, job["job"], "completed")


async def expect_cancel(
    runner: RawRunner, job_id: str, attempt: int, reason: str, timeout: float = 5.0
) -> None:
    message = await runner.recv(timeout)
    assert message == {"event": "cancel", "job": job_id, "attempt": attempt, "reason": reason}, (
        message
    )


async def assert_usable(runner: RawRunner, rclient: RClient, keys: Keys) -> None:
    """The connection is open, nothing is in flight, and no other job can be delivered.

    A `ready` is accepted and answered with a probe job submitted at the lowest priority: any
    other job the server could hand to this runner would come first. (As strong as waiting a
    whole poll for `no_job`, and much faster.)
    """
    probe = submit(rclient, keys, payload={"probe": True}, priority=-1_000_000)
    job = await take_job(runner, timeout=2)
    assert job["job"] == probe, job


async def expect_no_job(runner: RawRunner, poll_timeout: int = 1) -> None:
    await runner.send("ready", poll_timeout=poll_timeout)
    await runner.expect("no_job", poll_timeout + 3)


# -- fault injection --------------------------------------------------------------------------


def _own_local_ports() -> set[int]:
    """Local TCP ports of the sockets this process holds (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def kill_own_clients(rclient: RClient, kind: str = "pubsub") -> int:
    """``CLIENT KILL TYPE <kind>``, limited to this process's connections.

    The Redis is shared with other developers' processes: killing every pub/sub client there
    would break their runs, so each of ours is killed by id (the fault is the same for our pods).
    """
    ports = _own_local_ports()
    killed = 0
    for client in rclient.client_list(_type=kind):
        port = int(str(client["addr"]).rsplit(":", 1)[1])
        if port in ports:
            killed += int(
                rclient.execute_command("CLIENT", "KILL", "ID", client["id"], "SKIPME", "yes")
            )
    return killed
