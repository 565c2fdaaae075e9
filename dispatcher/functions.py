"""Typed calls of the Redis Function library (``lua/dispatch.lua``), free of I/O.

Each builder returns a ``Call``: the function name, the keys it declares, its arguments and a
parser for its reply. The sync and async executors at the bottom run a call on a redis-py client,
loading (or upgrading) the library when Redis does not know the function yet, so a fresh Redis
needs no setup step.

Calling convention: ``FCALL name numkeys key... arg...``. The declared keys are every key the call
touches that can be named from its arguments (built by ``Keys``); a cluster client routes the call
by them, and Redis Cluster checks they are served by the node. The Lua functions still build every
name from the namespace in ARGV[1] and ignore KEYS, so a producer in another language may call
them with numkeys 0 on a standalone Redis. Keys found at run time (the jobs of a queue, the runners
of an idle set) are not declared: with a hash-tagged namespace they share the declared keys' slot,
and Redis Cluster lets a function touch undeclared keys of the slot it runs for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, TypeVar

import msgspec
import redis
import redis.asyncio

from dispatcher import redisconn
from dispatcher.errors import InvalidInput, NotFound
from dispatcher.hotlane import FcallClient
from dispatcher.keys import LIBRARY_NAME, Keys
from dispatcher.usage_days import DEFAULT_RETENTION_DAYS, declared_days, utc_today

T = TypeVar("T")

LIBRARY_SOURCE = resources.files("dispatcher").joinpath("lua/dispatch.lua").read_text()


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One FCALL: ``name`` with its declared ``keys`` and ``args``; ``parse`` turns the reply into
    a value."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str | int | float, ...]
    parse: Callable[[Any], T]

    @property
    def keys_and_args(self) -> tuple[str | int | float, ...]:
        """What FCALL takes after the function name and numkeys: the keys, then ARGV."""
        return (*self.keys, *self.args)


def _fn(name: str) -> str:
    return f"{LIBRARY_NAME}_{name}"


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


_decode_json = msgspec.json.Decoder().decode  # ~7x json.loads on a function's reply


def _json(reply: Any) -> dict[str, Any]:
    value = _decode_json(reply)
    return value if isinstance(value, dict) else {}


def _int(reply: Any) -> int:
    return int(reply)


def _opt(value: str | None) -> str:
    """Optional text for `finish`: '' when absent, else '=' + value (so '' stays distinct)."""
    return "" if value is None else "=" + value


# -- producer and registry ----------------------------------------------------------------------


def _spec_keys(keys: Keys, spec: str) -> tuple[str, ...]:
    return (keys.pending(spec), keys.idle(spec))


def submit(
    keys: Keys,
    job_id: str,
    spec: str,
    payload: str,
    priority: int,
    timeout: float,
    max_attempts: int,
    retries: int = 0,
    retry_delay: float = 0,
    group: str = "",
) -> Call[str]:
    job = (keys.job(job_id),) if job_id else ()  # '' = the function makes up the id
    declared = (
        *job,
        keys.seq,
        keys.specs,
        *_spec_keys(keys, spec),
        keys.leases,
        keys.config,
        keys.stats,
        keys.events,
        *_group_keys(keys, group, spec),
    )
    return Call(
        _fn("submit"),
        declared,
        (
            keys.namespace,
            job_id,
            spec,
            payload,
            priority,
            timeout,
            max_attempts,
            retries,
            retry_delay,
            group,
        ),
        _text,
    )


def _group_keys(keys: Keys, group: str, spec: str | None = None) -> tuple[str, ...]:
    """What a call naming ``group`` may change of it (``spec``: its queue of that spec too)."""
    if not group:
        return ()
    queue = (keys.group_pending(group, spec),) if spec is not None else ()
    return (
        keys.groups,
        keys.group(group),
        keys.group_inflight(group),
        keys.group_specs(group),
        keys.group_heads(group),
        *queue,
    )


def group_set(keys: Keys, group: str, limit: int | None) -> Call[dict[str, Any]]:
    """Set (``None``: remove) the group's own limit; raising it releases waiting jobs at once."""
    declared = (
        *_group_keys(keys, group or "-"),
        keys.config,
        keys.leases,
        keys.stats,
        keys.events,
    )
    text = "" if limit is None else str(limit)
    return Call(_fn("group_set"), declared, (keys.namespace, group, text), _json)


def runner_pause(keys: Keys, name: str, paused: bool) -> Call[dict[str, Any]]:
    """Pause (or resume) a runner: it is offered nothing until resumed."""
    declared = (keys.runner(name), keys.config, keys.leases, keys.stats, keys.events)
    args = (keys.namespace, name, "1" if paused else "0")
    return Call(_fn("runner_pause"), declared, args, _json)


def cancel(keys: Keys, job_id: str, reason: str = "canceled") -> Call[bool]:
    # runners: canceling an ephemeral runner's attempt retires it
    declared = (
        keys.job(job_id),
        keys.leases,
        keys.outbox,
        keys.stats,
        keys.events,
        keys.delayed,
        keys.runners,
    )
    return Call(_fn("cancel"), declared, (keys.namespace, job_id, reason), lambda r: bool(int(r)))


def runner_add(
    keys: Keys, name: str, token_hash: str, specs: list[str], *, ephemeral: bool = False
) -> Call[int]:
    """``ephemeral``: the registration ends with the runner's first attempt (one-shot runners)."""
    declared = (keys.runner(name), keys.runners, keys.specs, keys.events)
    args = (keys.namespace, name, token_hash, json.dumps(specs), "1" if ephemeral else "")
    return Call(_fn("runner_add"), declared, args, _int)


def runner_revoke(keys: Keys, name: str) -> Call[int]:
    declared = (keys.runner(name), keys.runners, keys.events)
    return Call(_fn("runner_revoke"), declared, (keys.namespace, name), _int)


def runner_rotate(keys: Keys, name: str, token_hash: str) -> Call[bool]:
    """Replace a runner's token hash; True when a live connection was told to close (4001)."""
    declared = (keys.runner(name), keys.events)
    args = (keys.namespace, name, token_hash)
    return Call(_fn("runner_rotate"), declared, args, lambda r: bool(int(r)))


# -- results path ---------------------------------------------------------------------------------


def pump(
    keys: Keys,
    max_entries: int,
    visibility_ms: int,
    sink_visibility_ms: int,
    max_queued: int,
    queued: dict[str, int] | None = None,
) -> Call[dict[str, Any]]:
    """Hand out due outbox and sink box entries (re-scored, not removed) for rq batches.

    ``queued``: the lengths of the rq queues, measured by the caller where they live on another
    Redis ('results' and one entry per sink name; a sink not named counts as empty). Without it
    the function reads them itself (``LLEN``), so they must live in the namespace's Redis (and, on
    a cluster, in its slot)."""
    args: tuple[str | int, ...] = (
        keys.namespace,
        max_entries,
        visibility_ms,
        sink_visibility_ms,
        max_queued,
    )
    declared: tuple[str, ...] = (keys.outbox, keys.sinks)
    if queued is None:
        declared += (Keys.rq_queue(keys.results_queue),)
    else:
        args += (json.dumps(queued),)
    return Call(_fn("pump"), declared, args, _json)


def record(
    keys: Keys,
    entries: list[str],
    retention_s: int,
    sinks: list[str],
    usage_retention_days: int = DEFAULT_RETENTION_DAYS,
    usage_days: Sequence[str] | None = None,
) -> Call[list[tuple[str, bool]]]:
    """Record a batch of outbox entries; per entry (status afterwards, whether this call changed
    it). ``usage_days``: the usage hashes to declare (default: ``declared_days`` of today,
    UTC, on this machine's clock)."""
    ids = dict.fromkeys(entry.rpartition(":")[0] or entry for entry in entries)
    jobs = (*(keys.job(job_id) for job_id in ids), *(keys.log(job_id) for job_id in ids))
    if usage_days is None:
        usage_days = declared_days(utc_today())
    declared = (
        keys.outbox,
        *jobs,
        keys.stats,
        keys.events,
        keys.sinks,
        *(keys.sinkbox(sink) for sink in sinks),
        *(keys.usage(day) for day in usage_days),
        keys.usage_total,
    )
    return Call(
        _fn("record"),
        declared,
        (keys.namespace, retention_s, json.dumps(sinks), usage_retention_days, *entries),
        _pairs,
    )


def _pairs(reply: Any) -> list[tuple[str, bool]]:
    value = _decode_json(reply)
    return [(str(s), bool(c)) for s, c in value] if isinstance(value, list) else []


# -- pod side -----------------------------------------------------------------------------------


# what every job-scoped runner message may change: the job, its runner, the leases, the log
def _job_keys(keys: Keys, runner: str, job_id: str) -> tuple[str, ...]:
    return (keys.runner(runner), keys.job(job_id), keys.leases, keys.config, keys.events)


def attach(keys: Keys, runner: str, pod: str) -> Call[dict[str, Any]]:
    declared = (keys.runner(runner), keys.pod_runners(pod))
    return Call(_fn("attach"), declared, (keys.namespace, runner, pod), _json)


def detach(keys: Keys, runner: str, pod: str, conn: int) -> Call[int]:
    declared = (keys.runner(runner), keys.pod_runners(pod))
    return Call(_fn("detach"), declared, (keys.namespace, runner, pod, conn), _int)


def ready(
    keys: Keys, runner: str, conn: int, info: str, mode: str = "wait"
) -> Call[dict[str, Any]]:
    """``mode`` 'wait' enters the idle sets when nothing is pending; 'try' only looks."""
    # runners: an ephemeral runner whose held attempt this call ends (rule 1) is retired
    declared = (
        keys.runner(runner),
        keys.leases,
        keys.config,
        keys.outbox,
        keys.stats,
        keys.events,
        keys.runners,
    )
    return Call(_fn("ready"), declared, (keys.namespace, runner, conn, info, mode), _json)


def poll_end(keys: Keys, runner: str, conn: int, *, release: bool = False) -> Call[dict[str, Any]]:
    """``release``: a job assigned meanwhile goes back to the queue instead of being offered."""
    mode = "release" if release else "offer"
    declared = (keys.runner(runner), keys.leases, keys.config, keys.stats, keys.events)
    return Call(_fn("poll_end"), declared, (keys.namespace, runner, conn, mode), _json)


def observe(keys: Keys, pod: str, runner: str, local_job: str) -> Call[dict[str, Any]]:
    job = (keys.job(local_job),) if local_job else ()
    declared = (keys.pod_inbox(pod), keys.runner(runner), *job)
    return Call(_fn("observe"), declared, (keys.namespace, pod, runner, local_job), _json)


def start(
    keys: Keys, runner: str, job_id: str, attempt: int, pod: str = "", conn: int | None = None
) -> Call[dict[str, Any]]:
    """``pod`` and ``conn`` (the connection the `running` came on): an "ok" also settles the
    runner's entry in that pod's inbox (see the function's header)."""
    # outbox, stats, runners: past timeout + grace the job is canceled (an ephemeral runner retired)
    inbox = (keys.pod_inbox(pod),) if pod else ()
    declared = (*_job_keys(keys, runner, job_id), keys.outbox, keys.stats, keys.runners, *inbox)
    settle = (pod, conn) if pod and conn is not None else ()
    return Call(_fn("start"), declared, (keys.namespace, runner, job_id, attempt, *settle), _json)


def heartbeat(keys: Keys, runner: str, job_id: str, attempt: int) -> Call[dict[str, Any]]:
    declared = (*_job_keys(keys, runner, job_id), keys.outbox, keys.stats, keys.runners)
    return Call(_fn("heartbeat"), declared, (keys.namespace, runner, job_id, attempt), _json)


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
    # delayed: a retry; runners: an ephemeral runner retired
    retry = (keys.delayed, keys.runners)
    declared = (*_job_keys(keys, runner, job_id), keys.outbox, keys.stats, *retry)
    return Call(
        _fn("finish"),
        declared,
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


def tick(
    keys: Keys, pod: str, pod_ttl_ms: int, max_reap: int = 100, deep: bool = True
) -> Call[dict[str, Any]]:
    """Renew the pod's presence, reap due leases, release due retries, read its inbox; ``deep``
    also reaps dead pods and counts the pump's backlog (``reply["backlog"]``, ``reply["pods"]``)."""
    declared = (
        keys.pods,
        keys.pods_reaping,
        keys.pod_runners(pod),
        keys.pod_inbox(pod),
        keys.leases,
        keys.config,
        keys.outbox,
        keys.sinks,
        keys.stats,
        keys.events,
        keys.delayed,
        keys.runners,  # a reaped attempt retires an ephemeral runner
    )
    argv = (keys.namespace, pod, pod_ttl_ms, max_reap, int(deep))
    return Call(_fn("tick"), declared, argv, _json)


def pod_stop(keys: Keys, pod: str) -> Call[int]:
    declared = (keys.pods, keys.pods_reaping, keys.pod_runners(pod), keys.pod_inbox(pod))
    return Call(_fn("pod_stop"), declared, (keys.namespace, pod), _int)


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


async def load_library(client: redis.asyncio.Redis | FcallClient) -> None:
    """Load or upgrade the library (idempotent)."""
    await client.function_load(LIBRARY_SOURCE, replace=True)


def run_sync(client: redis.Redis, call: Call[T]) -> T:
    """Run ``call``, loading the library first if Redis lacks it."""
    try:
        try:
            reply = client.fcall(call.name, len(call.keys), *call.keys_and_args)
        except redis.ResponseError as exc:
            if not _missing_function(exc):
                raise
            load_library_sync(client)
            reply = client.fcall(call.name, len(call.keys), *call.keys_and_args)
    except redis.ResponseError as exc:
        raise _translate(exc) from None
    return call.parse(reply)


def _many_replies(calls: Sequence[Call[T]], replies: list[Any]) -> list[T | Exception]:
    out: list[T | Exception] = []
    for call, reply in zip(calls, replies, strict=True):
        if isinstance(reply, redis.ResponseError):
            out.append(_translate(reply))
        elif isinstance(reply, Exception):
            out.append(reply)
        else:
            out.append(call.parse(reply))
    return out


def _missing_at(replies: list[Any]) -> list[int]:
    missing = (isinstance(r, redis.ResponseError) and _missing_function(r) for r in replies)
    return [i for i, m in enumerate(missing) if m]


def run_many_sync(client: redis.Redis, calls: Sequence[Call[T]]) -> list[T | Exception]:
    """Run ``calls`` in one pipeline (one round trip; not a transaction: each call is atomic on its
    own), loading the library first if Redis lacks it (then only the calls that found no function
    run again). Per call: its value, or the exception its error reply maps to. A connection error
    raises: which calls ran is then unknown, so callers retry only idempotent calls."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        for i in todo:
            pipe.fcall(calls[i].name, len(calls[i].keys), *calls[i].keys_and_args)
        for i, reply in zip(todo, pipe.execute(raise_on_error=False), strict=True):
            replies[i] = reply
        todo = _missing_at(replies)
        if not todo or attempt == 2:
            break
        load_library_sync(client)
    return _many_replies(calls, replies)


async def run_many(client: redis.asyncio.Redis, calls: Sequence[Call[T]]) -> list[T | Exception]:
    """``run_many_sync`` for an asyncio client."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in (1, 2):
        async with client.pipeline(transaction=False) as pipe:
            for i in todo:
                pipe.fcall(calls[i].name, len(calls[i].keys), *calls[i].keys_and_args)
            got = await pipe.execute(raise_on_error=False)
        for i, reply in zip(todo, got, strict=True):
            replies[i] = reply
        todo = _missing_at(replies)
        if not todo or attempt == 2:
            break
        await load_library(client)
    return _many_replies(calls, replies)


async def run_then(
    client: redis.asyncio.Redis, call: Call[T], command: tuple[str | int, ...]
) -> tuple[T, Any]:
    """Run ``call`` and then ``command`` on the same connection (a pipeline): for WAIT/WAITAOF,
    which count the writes of their own connection. The command's error is returned, not
    raised. On a cluster both go to the node serving the call's keys (``same_node``)."""
    node = await redisconn.same_node(client, call.keys[0]) if call.keys else client
    for attempt in (1, 2):
        async with node.pipeline(transaction=False) as pipe:
            pipe.fcall(call.name, len(call.keys), *call.keys_and_args)
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


async def run(client: redis.asyncio.Redis | FcallClient, call: Call[T]) -> T:
    """Run ``call``, loading the library first if Redis lacks it."""
    try:
        try:
            reply = await client.fcall(call.name, len(call.keys), *call.keys_and_args)
        except redis.ResponseError as exc:
            if not _missing_function(exc):
                raise
            await load_library(client)
            reply = await client.fcall(call.name, len(call.keys), *call.keys_and_args)
    except redis.ResponseError as exc:
        raise _translate(exc) from None
    return call.parse(reply)
