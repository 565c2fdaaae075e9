"""Typed calls of the Redis Function library (``lua/dispatch.lua``), free of I/O.

Each builder returns a ``Call``: the function name, its arguments and a parser for its reply. The
sync and async executors at the bottom run a call on a redis-py client, loading (or upgrading) the
library when Redis does not know the function yet, so a fresh Redis needs no setup step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio

from dispatcher.errors import InvalidInput, NotFound
from dispatcher.keys import LIBRARY_NAME, Keys

T = TypeVar("T")

LIBRARY_SOURCE = resources.files("dispatcher").joinpath("lua/dispatch.lua").read_text()


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One FCALL: ``name`` with numkeys 0 and ``args``; ``parse`` turns the reply into a value."""

    name: str
    args: tuple[str | int | float, ...]
    parse: Callable[[Any], T]


def _fn(name: str) -> str:
    return f"{LIBRARY_NAME}_{name}"


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _json(reply: Any) -> dict[str, Any]:
    value = json.loads(reply)
    return value if isinstance(value, dict) else {}


def _int(reply: Any) -> int:
    return int(reply)


def _opt(value: str | None) -> str:
    """Optional text for `finish`: '' when absent, else '=' + value (so '' stays distinct)."""
    return "" if value is None else "=" + value


# -- producer and registry ----------------------------------------------------------------------


def submit(
    keys: Keys,
    job_id: str,
    spec: str,
    payload: str,
    priority: int,
    timeout: float,
    max_attempts: int,
) -> Call[str]:
    return Call(
        _fn("submit"),
        (keys.namespace, job_id, spec, payload, priority, timeout, max_attempts),
        _text,
    )


def cancel(keys: Keys, job_id: str, reason: str = "canceled") -> Call[bool]:
    return Call(_fn("cancel"), (keys.namespace, job_id, reason), lambda r: bool(int(r)))


def runner_add(keys: Keys, name: str, token_hash: str, specs: list[str]) -> Call[int]:
    return Call(_fn("runner_add"), (keys.namespace, name, token_hash, json.dumps(specs)), _int)


def runner_revoke(keys: Keys, name: str) -> Call[int]:
    return Call(_fn("runner_revoke"), (keys.namespace, name), _int)


def runner_rotate(keys: Keys, name: str, token_hash: str) -> Call[bool]:
    """Replace a runner's token hash; True when a live connection was told to close (4001)."""
    return Call(_fn("runner_rotate"), (keys.namespace, name, token_hash), lambda r: bool(int(r)))


# -- results path ---------------------------------------------------------------------------------


def pump(
    keys: Keys, max_entries: int, visibility_ms: int, sink_visibility_ms: int, max_queued: int
) -> Call[dict[str, Any]]:
    """Hand out due outbox and sink box entries (re-scored, not removed) for rq batches."""
    args = (keys.namespace, max_entries, visibility_ms, sink_visibility_ms, max_queued)
    return Call(_fn("pump"), args, _json)


def record(
    keys: Keys, entries: list[str], retention_s: int, sinks: list[str]
) -> Call[list[tuple[str, bool]]]:
    """Record a batch of outbox entries; per entry (status afterwards, whether this call changed
    it)."""
    return Call(
        _fn("record"),
        (keys.namespace, retention_s, json.dumps(sinks), *entries),
        _pairs,
    )


def _pairs(reply: Any) -> list[tuple[str, bool]]:
    value = json.loads(reply)
    return [(str(s), bool(c)) for s, c in value] if isinstance(value, list) else []


# -- pod side -----------------------------------------------------------------------------------


def attach(keys: Keys, runner: str, pod: str) -> Call[dict[str, Any]]:
    return Call(_fn("attach"), (keys.namespace, runner, pod), _json)


def detach(keys: Keys, runner: str, pod: str, conn: int) -> Call[int]:
    return Call(_fn("detach"), (keys.namespace, runner, pod, conn), _int)


def ready(
    keys: Keys, runner: str, conn: int, info: str, mode: str = "wait"
) -> Call[dict[str, Any]]:
    """``mode`` 'wait' enters the idle sets when nothing is pending; 'try' only looks."""
    return Call(_fn("ready"), (keys.namespace, runner, conn, info, mode), _json)


def poll_end(keys: Keys, runner: str, conn: int, *, release: bool = False) -> Call[dict[str, Any]]:
    """``release``: a job assigned meanwhile goes back to the queue instead of being offered."""
    mode = "release" if release else "offer"
    return Call(_fn("poll_end"), (keys.namespace, runner, conn, mode), _json)


def observe(keys: Keys, pod: str, runner: str, local_job: str) -> Call[dict[str, Any]]:
    return Call(_fn("observe"), (keys.namespace, pod, runner, local_job), _json)


def start(keys: Keys, runner: str, job_id: str, attempt: int) -> Call[dict[str, Any]]:
    return Call(_fn("start"), (keys.namespace, runner, job_id, attempt), _json)


def heartbeat(keys: Keys, runner: str, job_id: str, attempt: int) -> Call[dict[str, Any]]:
    return Call(_fn("heartbeat"), (keys.namespace, runner, job_id, attempt), _json)


def finish(
    keys: Keys,
    runner: str,
    job_id: str,
    attempt: int,
    status: str,
    *,
    exit_code: int | None,
    results: str | None,
    stdout: str | None,
    stderr: str | None,
    error: str,
) -> Call[dict[str, Any]]:
    code = None if exit_code is None else str(exit_code)
    return Call(
        _fn("finish"),
        (
            keys.namespace,
            runner,
            job_id,
            attempt,
            status,
            _opt(code),
            _opt(results),
            _opt(stdout),
            _opt(stderr),
            error,
        ),
        _json,
    )


def tick(keys: Keys, pod: str, pod_ttl_ms: int, max_reap: int = 100) -> Call[dict[str, Any]]:
    return Call(_fn("tick"), (keys.namespace, pod, pod_ttl_ms, max_reap), _json)


def pod_stop(keys: Keys, pod: str) -> Call[int]:
    return Call(_fn("pod_stop"), (keys.namespace, pod), _int)


# -- executors ----------------------------------------------------------------------------------


def _translate(exc: redis.ResponseError) -> Exception:
    """Map a function's error reply to this package's exceptions."""
    message = str(exc).removeprefix("ERR ").strip()
    if message.startswith(("no such job", "no such runner")):
        return NotFound(message)
    if message.startswith(("invalid", "job ", "runner ", "at least")):
        return InvalidInput(message)
    return exc


def _missing_function(exc: redis.ResponseError) -> bool:
    return "function not found" in str(exc).lower()


def load_library_sync(client: redis.Redis) -> None:
    """Load or upgrade the library (idempotent)."""
    client.function_load(LIBRARY_SOURCE, replace=True)


async def load_library(client: redis.asyncio.Redis) -> None:
    """Load or upgrade the library (idempotent)."""
    await client.function_load(LIBRARY_SOURCE, replace=True)


def run_sync(client: redis.Redis, call: Call[T]) -> T:
    """Run ``call``, loading the library first if Redis lacks it."""
    try:
        try:
            reply = client.fcall(call.name, 0, *call.args)
        except redis.ResponseError as exc:
            if not _missing_function(exc):
                raise
            load_library_sync(client)
            reply = client.fcall(call.name, 0, *call.args)
    except redis.ResponseError as exc:
        raise _translate(exc) from None
    return call.parse(reply)


async def run_then(
    client: redis.asyncio.Redis, call: Call[T], command: tuple[str | int, ...]
) -> tuple[T, Any]:
    """Run ``call`` and then ``command`` on the same connection (a pipeline): for WAIT/WAITAOF,
    which count the writes of their own connection. The command's error is returned, not
    raised."""
    for attempt in (1, 2):
        async with client.pipeline(transaction=False) as pipe:
            pipe.fcall(call.name, 0, *call.args)
            pipe.execute_command(*command)
            reply, after = await pipe.execute(raise_on_error=False)
        if isinstance(reply, redis.ResponseError):
            if attempt == 1 and _missing_function(reply):
                await load_library(client)
                continue
            raise _translate(reply) from None
        if isinstance(reply, Exception):
            raise reply
        return call.parse(reply), after
    raise AssertionError("unreachable")


async def run(client: redis.asyncio.Redis, call: Call[T]) -> T:
    """Run ``call``, loading the library first if Redis lacks it."""
    try:
        try:
            reply = await client.fcall(call.name, 0, *call.args)
        except redis.ResponseError as exc:
            if not _missing_function(exc):
                raise
            await load_library(client)
            reply = await client.fcall(call.name, 0, *call.args)
    except redis.ResponseError as exc:
        raise _translate(exc) from None
    return call.parse(reply)
