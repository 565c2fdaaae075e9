"""Producer clients: put jobs into Redis, read them, cancel them, wait for their outcome.

``Client`` is synchronous, ``AsyncClient`` its asyncio twin (every method a coroutine). Both call
the Redis Function library, so they agree with producers in other languages by construction.
``wait`` is driven by the done channel (the library publishes a job id when the job becomes
processed, failed or canceled), with a slow re-check because pub/sub may lose a message; with a
``progress`` callback it follows the event stream instead, handing each of the job's events to the
callback (the same slow re-check covers a stream trimmed under load).

``resolve`` turns a unique id prefix into the whole id, ``jobs`` lists jobs and ``runners`` the
registered runners; they only read (``dispatcher.lookup``).

The async client takes any number of concurrent calls on a bounded pool: commands queue for one of
``max_connections`` connections, and all its waiters share one pub/sub connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import redis
import redis.asyncio

from dispatcher import functions, groups, redisconn
from dispatcher.errors import NotFound
from dispatcher.keys import Keys
from dispatcher.logs import LogChunk
from dispatcher.logs_follow import read_log, read_log_async
from dispatcher.lookup import jobs_plan, resolve_plan, run_plan, run_plan_async, runners_plan
from dispatcher.records import FINAL_STATUSES, job_record, text
from dispatcher.settings import Settings
from dispatcher.status import read_status, read_status_async
from dispatcher.submission import (
    SUBMIT_BATCH,
    batch_ids,
    check_job_id,
    check_runner_specs,
    job_request,
    job_requests,
)
from dispatcher.tokens import new_token, token_hash
from dispatcher.usage import DateLike, UsageQuery, usage_plan
from dispatcher.waiters import DoneWaiters

# A submit that meets a connection error is sent again with the same job id after these delays
# (about 15 s in all: a Redis restart or failover), then the error is raised.
SUBMIT_RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 4.0)

T = TypeVar("T")


def _retried(send: Callable[[], T]) -> T:
    """``send`` (an idempotent submit: its job ids are chosen before sending), sent again after a
    connection error, after each of ``SUBMIT_RETRY_DELAYS``; the last error is raised."""
    for delay in SUBMIT_RETRY_DELAYS:
        try:
            return send()
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(delay)
    return send()


async def _retried_async(send: Callable[[], Awaitable[T]]) -> T:
    """``_retried`` for a coroutine."""
    for delay in SUBMIT_RETRY_DELAYS:
        try:
            return await send()
        except (redis.ConnectionError, redis.TimeoutError):
            await asyncio.sleep(delay)
    return await send()


RECHECK_INTERVAL = 5.0
DEFAULT_MAX_CONNECTIONS = 32
TIMEOUT_MESSAGE = "timed out waiting for the job to reach a final state"
EventEntry = dict[str, str]
Progress = Callable[[EventEntry], None]
FINAL_EVENTS = frozenset({"processed", "failed", "canceled"})


def _client_name(settings: Settings) -> str:
    return f"dispatcher-client:{settings.namespace}"


def _stream_entries(reply: Any) -> Iterator[EventEntry]:
    """The entries of an XREAD reply as flat dicts, the stream id under ``id``."""
    for _stream, entries in reply or ():
        for entry_id, fields in entries:
            event = {str(text(k)): str(text(v)) for k, v in fields.items()}
            event["id"] = str(text(entry_id))
            yield event


def _record_or_raise(job_id: str, raw: dict[Any, Any]) -> dict[str, Any]:
    if not raw:
        raise NotFound(f"no such job: {job_id}")
    return job_record(raw)


def _final_or_timeout(record: dict[str, Any] | None) -> dict[str, Any]:
    if record is None:
        raise TimeoutError(TIMEOUT_MESSAGE)
    return record


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


class Client:
    """Synchronous producer client of one namespace."""

    recheck_interval = RECHECK_INTERVAL

    def __init__(self, settings: Settings, redis_client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self._owned = redis_client is None
        if redis_client is None:
            redis_client = redisconn.sync_client(
                settings.redis_url,
                decode_responses=True,
                client_name=_client_name(settings),
                # its subscription waits for messages: no read timeout, no idle PING
                socket_timeout=None,
                health_check_interval=0,
            )
        self._redis = redis_client

    @classmethod
    def from_env(cls) -> Client:
        """A client configured by the ``DISPATCHER_*`` environment variables."""
        return cls(Settings.from_env())

    def submit(
        self,
        spec: str,
        payload: Any = None,
        *,
        priority: int = 0,
        timeout: float | None = None,
        max_attempts: int = 1,
        job_id: str | None = None,
        check_payload: bool = False,
        retries: int = 0,
        retry_delay: float = 0,
        group: str | None = None,
    ) -> str:
        """Submit a job; return its id. Bad input raises ValueError/TypeError, writing nothing.

        ``job_id`` (a UUID) makes the submit idempotent across processes: the same id and content
        again returns the same job. Without one a UUID is chosen here, so the retries this call
        makes after a connection error (Redis restarting) can never create the job twice.
        ``check_payload=True`` also refuses a payload the reference runner could not run (one of
        ``command`` or ``script``: ``dispatcher.submission.check_runner_payload``).
        ``max_attempts`` counts infrastructure failures (lease lost, runner gone); ``retries``
        (default 0) how often an attempt the runner reports ``failed`` is queued again, each
        after ``retry_delay`` seconds; ``wait`` returns only the final outcome. ``group``: its
        concurrency group (at most the group's limit of its jobs claimed or running at once).
        """
        request = job_request(
            spec,
            payload,
            priority=priority,
            timeout=timeout,
            max_attempts=max_attempts,
            job_id=job_id,
            check_payload=check_payload,
            retries=retries,
            retry_delay=retry_delay,
            group=group,
        )
        call = request.call(self.keys)
        return _retried(functools.partial(functions.run_sync, self._redis, call))

    def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Submit several jobs, ``SUBMIT_BATCH`` per round trip (a pipeline); return their ids in
        order. Each item holds ``submit``'s arguments by name (``spec`` required).

        Every item is validated first: bad input raises ValueError/TypeError naming the item
        (``jobs[3]: ...``), writing nothing. Each job is its own atomic submit, not one
        transaction: a job Redis refuses (a ``job_id`` that exists with other content) raises
        ``InvalidInput`` naming it and what went in. The ids are chosen before sending, so a batch
        sent again after a connection error never creates a job twice.
        """
        requests = job_requests(jobs)
        ids: list[str] = []
        for first in range(0, len(requests), SUBMIT_BATCH):
            calls = [r.call(self.keys) for r in requests[first : first + SUBMIT_BATCH]]
            replies = _retried(functools.partial(functions.run_many_sync, self._redis, calls))
            ids.extend(batch_ids(first, replies))
        return ids

    def get(self, job_id: str) -> dict[str, Any]:
        """The job record; ``KeyError`` (``NotFound``) for an unknown id."""
        job_id = check_job_id(job_id)
        return _record_or_raise(job_id, self._redis.hgetall(self.keys.job(job_id)))

    def cancel(self, job_id: str) -> bool:
        """Cancel a job: True when this call canceled it, False when it was already final."""
        job_id = check_job_id(job_id)
        # the cancel function puts the outcome in the results outbox; the pods pump it
        return functions.run_sync(self._redis, functions.cancel(self.keys, job_id))

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        progress: Progress | None = None,
        since: str = "0",
    ) -> dict[str, Any]:
        """The job record once the job is processed, failed or canceled.

        Raises ``TimeoutError`` when ``timeout`` seconds pass first, ``KeyError`` for an unknown id.
        ``progress`` is called with each of the job's events (stream entries after ``since``, as
        ``events`` yields them) until then.
        """
        job_id = check_job_id(job_id)
        if timeout is not None and timeout <= 0:  # no time to wait: look once
            return _final_or_timeout(self._final_record(job_id))
        deadline = _deadline(timeout)
        if progress is not None:
            return self._follow(job_id, deadline, progress, since)
        pubsub = self._subscribe(deadline)
        try:
            while True:
                record = self._final_record(job_id)
                if record is not None:
                    return record
                try:
                    self._next_notice(pubsub, job_id, deadline)
                except redis.ConnectionError:
                    # the subscription broke and a notice may be lost: subscribe anew, re-check
                    pubsub.close()
                    pubsub = self._subscribe(deadline)
        finally:
            pubsub.close()

    def events(
        self, job_id: str | None = None, *, since: str = "$", block: float = 5.0
    ) -> Iterator[EventEntry]:
        """Follow the event stream (entries after ``since``; "0" = from the start), forever.

        Each entry is a dict of its fields plus ``id`` (the stream id); with ``job_id``, only that
        job's entries. Stop by leaving the loop.
        """
        cursor = since
        while True:
            reply = self._redis.xread({self.keys.events: cursor}, block=int(block * 1000))
            for event in _stream_entries(reply):
                cursor = event["id"]
                if job_id is None or event.get("job") == job_id:
                    yield event

    def last_event_id(self) -> str:
        """The id of the newest event ("0" when there is none), a ``since`` for ``events``."""
        newest = self._redis.xrevrange(self.keys.events, count=1)
        if not newest:
            return "0"
        entry_id = newest[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def logs(self, job_id: str, *, follow: bool = False, after: str = "0") -> Iterator[LogChunk]:
        """The job's live log (``dispatcher.logs.LogChunk``, oldest first, after stream id
        ``after``); with ``follow``, chunks as they arrive until the job is final. ``NotFound``
        for an unknown job."""
        job_id = check_job_id(job_id)
        return read_log(self._redis, self.keys, job_id, follow=follow, after=after)

    def status(self) -> dict[str, Any]:
        """A snapshot of the namespace (see ``dispatcher.status``)."""
        return read_status(self._redis, self.keys)

    def resolve(self, job_id: str) -> str:
        """The whole id of the one job whose id starts with ``job_id`` (a whole id is returned as
        it is). ``NotFound`` when none does; ``AmbiguousJobId`` (an ``InvalidInput``) naming the
        matches when several do."""
        return str(run_plan(self._redis, resolve_plan(self.keys, job_id)))

    def usage(
        self, *, since: DateLike = None, until: DateLike = None, by: str = "spec"
    ) -> dict[str, Any]:
        """Runner-seconds and final jobs per UTC day, ``since`` to ``until`` (dates: a ``date``,
        'YYYY-MM-DD', 'today', 'yesterday'; default the 30 days up to today), by spec, group or
        runner: the report of ``dispatcher.usage.usage_report``. ``InvalidInput`` for a bad date,
        since after until, or another ``by``; nothing is read then."""
        query = UsageQuery.build(since, until, by)
        return dict(run_plan(self._redis, usage_plan(self.keys, query)))

    def jobs(
        self,
        *,
        status: str | None = None,
        spec: str | None = None,
        runner: str | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """Job summaries, newest first: every pending and in-flight job, and the final jobs the
        event stream still names (see ``dispatcher.lookup``)."""
        plan = jobs_plan(self.keys, status=status, spec=spec, runner=runner, limit=limit)
        return list(run_plan(self._redis, plan))

    def runners(self) -> list[dict[str, Any]]:
        """Every registered runner's record (name, specs, state, ...), sorted by name."""
        return list(run_plan(self._redis, runners_plan(self.keys)))

    def set_group_limit(self, group: str, limit: int | None) -> dict[str, Any]:
        """Limit ``group`` to ``limit`` jobs claimed or running at once (``None``: no limit of its
        own). Lowering cancels nothing; raising hands waiting jobs to idle runners at once.
        Returns ``{"group", "limit", "inflight", "released"}``."""
        return functions.run_sync(self._redis, groups.set_limit_call(self.keys, group, limit))

    def groups(self) -> list[dict[str, Any]]:
        """Every group: ``limit`` (None = unlimited), ``inflight``, ``pending``, by name."""
        return groups.list_groups(self._redis, self.keys)

    def pause_runner(self, name: str) -> dict[str, Any]:
        """Offer runner ``name`` nothing until resumed (it keeps its connection and its job)."""
        return functions.run_sync(self._redis, functions.runner_pause(self.keys, name, True))

    def resume_runner(self, name: str) -> dict[str, Any]:
        """Resume runner ``name``; a waiting runner gets pending work at once (``job``)."""
        return functions.run_sync(self._redis, functions.runner_pause(self.keys, name, False))

    def add_runner(self, name: str, specs: list[str], *, ephemeral: bool = False) -> str:
        """Register runner ``name`` for ``specs``; return its token (Redis keeps only its hash).

        ``ephemeral=True``: the registration is removed by the call that ends the runner's first
        attempt (its token is refused from then on), for autoscalers that start one VM or pod
        per job. ``InvalidInput`` for a bad name or spec, or a name that exists already."""
        token = new_token()
        call = functions.runner_add(
            self.keys, name, token_hash(token), check_runner_specs(name, specs), ephemeral=ephemeral
        )
        functions.run_sync(self._redis, call)
        return token

    def close(self) -> None:
        if self._owned:
            self._redis.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------------

    def _final_record(self, job_id: str) -> dict[str, Any] | None:
        status = text(self._redis.hget(self.keys.job(job_id), "status"))
        if status is None:
            raise NotFound(f"no such job: {job_id}")
        return self.get(job_id) if status in FINAL_STATUSES else None

    def _follow(
        self, job_id: str, deadline: float | None, progress: Progress, since: str
    ) -> dict[str, Any]:
        """``wait`` driven by the event stream: each of the job's events goes to ``progress``."""
        cursor = since
        checked = -math.inf
        while True:
            if time.monotonic() - checked >= self.recheck_interval:
                # the record decides (under heavy load the stream may be trimmed past an event)
                checked = time.monotonic()
                record = self._final_record(job_id)
                if record is not None:
                    return record
            block = min(self._slice(deadline), self.recheck_interval)
            reply = self._redis.xread({self.keys.events: cursor}, block=max(1, int(block * 1000)))
            for event in _stream_entries(reply):
                cursor = event["id"]
                if event.get("job") == job_id:
                    progress(event)
                    if event.get("event") in FINAL_EVENTS:
                        checked = -math.inf

    def _subscribe(self, deadline: float | None) -> redis.client.PubSub:
        """A subscription to the done channel, returned once Redis has confirmed it."""
        pubsub = redisconn.sync_pubsub(self._redis, self.keys.done_channel)
        try:
            pubsub.ssubscribe(self.keys.done_channel)
            while True:
                message = pubsub.get_message(timeout=self._slice(deadline))
                if message is not None and message["type"] == "ssubscribe":
                    return pubsub
        except BaseException:
            pubsub.close()
            raise

    def _next_notice(
        self, pubsub: redis.client.PubSub, job_id: str, deadline: float | None
    ) -> None:
        """Return when ``job_id`` is announced or the re-check interval has passed."""
        until = time.monotonic() + self.recheck_interval
        while (left := until - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=min(self._slice(deadline), left))
            if message is None:
                continue
            if message["type"] in ("ssubscribe", "sunsubscribe"):
                return  # re-subscribed after a reconnect, or dropped: a message may be lost
            if message["type"] == "smessage" and text(message["data"]) == job_id:
                return

    @staticmethod
    def _slice(deadline: float | None) -> float:
        remaining = _remaining(deadline)
        if remaining is None:
            return RECHECK_INTERVAL
        if remaining <= 0:
            raise TimeoutError(TIMEOUT_MESSAGE)
        return remaining


class AsyncClient:
    """Asyncio producer client of one namespace; every method (and ``close``) is a coroutine."""

    recheck_interval = RECHECK_INTERVAL

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.asyncio.Redis | None = None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        if max_connections < 2:
            raise ValueError("max_connections must be >= 2 (one is the shared subscription)")
        self._owned = redis_client is None
        if redis_client is None:
            # a blocking pool makes callers queue for a connection instead of opening more
            redis_client = redisconn.async_client(
                settings.redis_url,
                max_connections,
                None,
                decode_responses=True,
                client_name=_client_name(settings),
                socket_timeout=None,  # the shared subscription is one of its connections
                health_check_interval=0,
            )
        self._redis = redis_client
        self._waiters = DoneWaiters(self._redis, self.keys.done_channel)

    @classmethod
    def from_env(cls) -> AsyncClient:
        """A client configured by the ``DISPATCHER_*`` environment variables (a plain call)."""
        return cls(Settings.from_env())

    async def submit(
        self,
        spec: str,
        payload: Any = None,
        *,
        priority: int = 0,
        timeout: float | None = None,
        max_attempts: int = 1,
        job_id: str | None = None,
        check_payload: bool = False,
        retries: int = 0,
        retry_delay: float = 0,
        group: str | None = None,
    ) -> str:
        """Submit a job; return its id. Bad input raises ValueError/TypeError, writing nothing.

        ``job_id`` (a UUID) makes the submit idempotent across processes: the same id and content
        again returns the same job. Without one a UUID is chosen here, so the retries this call
        makes after a connection error (Redis restarting) can never create the job twice.
        ``check_payload=True`` also refuses a payload the reference runner could not run (one of
        ``command`` or ``script``: ``dispatcher.submission.check_runner_payload``).
        ``max_attempts`` counts infrastructure failures (lease lost, runner gone); ``retries``
        (default 0) how often an attempt the runner reports ``failed`` is queued again, each
        after ``retry_delay`` seconds; ``wait`` returns only the final outcome. ``group``: its
        concurrency group (at most the group's limit of its jobs claimed or running at once).
        """
        request = job_request(
            spec,
            payload,
            priority=priority,
            timeout=timeout,
            max_attempts=max_attempts,
            job_id=job_id,
            check_payload=check_payload,
            retries=retries,
            retry_delay=retry_delay,
            group=group,
        )
        call = request.call(self.keys)
        return await _retried_async(functools.partial(functions.run, self._redis, call))

    async def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[str]:
        """``Client.submit_many``: several jobs, ``SUBMIT_BATCH`` per round trip."""
        requests = job_requests(jobs)
        ids: list[str] = []
        for first in range(0, len(requests), SUBMIT_BATCH):
            calls = [r.call(self.keys) for r in requests[first : first + SUBMIT_BATCH]]
            send = functools.partial(functions.run_many, self._redis, calls)
            replies = await _retried_async(send)
            ids.extend(batch_ids(first, replies))
        return ids

    async def get(self, job_id: str) -> dict[str, Any]:
        """The job record; ``KeyError`` (``NotFound``) for an unknown id."""
        job_id = check_job_id(job_id)
        return _record_or_raise(job_id, await self._redis.hgetall(self.keys.job(job_id)))

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job: True when this call canceled it, False when it was already final."""
        job_id = check_job_id(job_id)
        # the cancel function puts the outcome in the results outbox; the pods pump it
        canceled: bool = await functions.run(self._redis, functions.cancel(self.keys, job_id))
        return canceled

    async def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The job record once the job is processed, failed or canceled.

        Raises ``TimeoutError`` when ``timeout`` seconds pass first, ``KeyError`` for an unknown id.
        """
        job_id = check_job_id(job_id)
        if timeout is not None and timeout <= 0:  # no time to wait: look once
            return _final_or_timeout(await self._final_record(job_id))
        deadline = _deadline(timeout)
        with self._waiters.register(job_id) as wake:
            await asyncio.wait_for(self._waiters.subscribed(), _remaining(deadline))
            while True:
                wake.clear()
                record = await self._final_record(job_id)
                if record is not None:
                    return record
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(TIMEOUT_MESSAGE)
                pause = (
                    self.recheck_interval
                    if remaining is None
                    else min(remaining, self.recheck_interval)
                )
                # a timeout here is the slow re-check, or the deadline (raised on the next turn)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), pause)

    async def events(
        self, job_id: str | None = None, *, since: str = "$", block: float = 5.0
    ) -> AsyncIterator[EventEntry]:
        """Follow the event stream like ``Client.events`` (holds one pool connection meanwhile)."""
        cursor = since
        while True:
            reply = await self._redis.xread({self.keys.events: cursor}, block=int(block * 1000))
            for event in _stream_entries(reply):
                cursor = event["id"]
                if job_id is None or event.get("job") == job_id:
                    yield event

    def logs(
        self, job_id: str, *, follow: bool = False, after: str = "0"
    ) -> AsyncIterator[LogChunk]:
        """``async for chunk in client.logs(job_id, follow=True)``: as ``Client.logs``."""
        job_id = check_job_id(job_id)
        return read_log_async(self._redis, self.keys, job_id, follow=follow, after=after)

    async def status(self) -> dict[str, Any]:
        """A snapshot of the namespace (see ``dispatcher.status``)."""
        return await read_status_async(self._redis, self.keys)

    async def resolve(self, job_id: str) -> str:
        """The whole id of the one job whose id starts with ``job_id`` (see ``Client.resolve``)."""
        return str(await run_plan_async(self._redis, resolve_plan(self.keys, job_id)))

    async def usage(
        self, *, since: DateLike = None, until: DateLike = None, by: str = "spec"
    ) -> dict[str, Any]:
        """Runner-seconds and final jobs per UTC day, by spec, group or runner (see
        ``Client.usage``)."""
        query = UsageQuery.build(since, until, by)
        return dict(await run_plan_async(self._redis, usage_plan(self.keys, query)))

    async def jobs(
        self,
        *,
        status: str | None = None,
        spec: str | None = None,
        runner: str | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """Job summaries, newest first (see ``Client.jobs``)."""
        plan = jobs_plan(self.keys, status=status, spec=spec, runner=runner, limit=limit)
        return list(await run_plan_async(self._redis, plan))

    async def runners(self) -> list[dict[str, Any]]:
        """Every registered runner's record, sorted by name."""
        return list(await run_plan_async(self._redis, runners_plan(self.keys)))

    async def set_group_limit(self, group: str, limit: int | None) -> dict[str, Any]:
        """As ``Client.set_group_limit``."""
        return await functions.run(self._redis, groups.set_limit_call(self.keys, group, limit))

    async def groups(self) -> list[dict[str, Any]]:
        """As ``Client.groups``."""
        return await groups.list_groups_async(self._redis, self.keys)

    async def pause_runner(self, name: str) -> dict[str, Any]:
        """As ``Client.pause_runner``."""
        return await functions.run(self._redis, functions.runner_pause(self.keys, name, True))

    async def resume_runner(self, name: str) -> dict[str, Any]:
        """As ``Client.resume_runner``."""
        return await functions.run(self._redis, functions.runner_pause(self.keys, name, False))

    async def add_runner(self, name: str, specs: list[str], *, ephemeral: bool = False) -> str:
        """Register runner ``name`` for ``specs``; return its token (see ``Client.add_runner``)."""
        token = new_token()
        call = functions.runner_add(
            self.keys, name, token_hash(token), check_runner_specs(name, specs), ephemeral=ephemeral
        )
        await functions.run(self._redis, call)
        return token

    async def close(self) -> None:
        await self._waiters.close()
        if self._owned:
            await self._redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- helpers --------------------------------------------------------------------------------

    async def _final_record(self, job_id: str) -> dict[str, Any] | None:
        status = text(await self._redis.hget(self.keys.job(job_id), "status"))
        if status is None:
            raise NotFound(f"no such job: {job_id}")
        return await self.get(job_id) if status in FINAL_STATUSES else None
