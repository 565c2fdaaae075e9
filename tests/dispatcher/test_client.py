"""The producer clients against a real Redis: submit, get, cancel, wait, events, status."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dispatcher import functions
from dispatcher.client import AsyncClient, Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.jobflow import CONTRACT_FIELDS, POD, SPEC, FakePod
from worker_bridge.tasks import process_result


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings) as c:
        yield c


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A connection that does not decode, like an rq worker's."""
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def namespace_keys(rclient: redis.Redis, keys: Keys) -> list[str]:
    return list(rclient.scan_iter(match=f"{keys.namespace}:*", count=1000))


def later(delay: float, action: Any) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- submit and get ----------------------------------------------------------------------------


def test_submit_writes_a_pending_job_with_the_documented_defaults(client: Client) -> None:
    job_id = client.submit(SPEC)
    assert uuid.UUID(job_id).version == 4
    record = client.get(job_id)
    assert set(record) >= CONTRACT_FIELDS
    assert record["status"] == "pending"
    assert (record["priority"], record["timeout"], record["max_attempts"]) == (0, 3600, 1)
    assert record["payload"] == {} and record["attempt"] == 0 and record["created"].endswith("Z")


def test_submit_keeps_payload_and_options(client: Client) -> None:
    payload = {"command": ["echo", "hé"], "env": {"A": "1"}}
    job_id = client.submit(SPEC, payload, priority=-7, timeout=1.5, max_attempts=3)
    record = client.get(job_id)
    assert record["payload"] == payload
    assert (record["priority"], record["timeout"], record["max_attempts"]) == (-7, 1.5, 3)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"spec": ""}, ValueError),
        ({"spec": "has space"}, ValueError),
        ({"spec": "x" * 129}, ValueError),
        ({"spec": 5}, TypeError),
        ({"payload": {"x": object()}}, TypeError),
        ({"payload": {"x": math.nan}}, ValueError),
        ({"payload": "x" * (1024 * 1024)}, ValueError),
        ({"priority": 1.5}, TypeError),
        ({"priority": True}, TypeError),
        ({"priority": 2**60}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"timeout": math.inf}, ValueError),
        ({"timeout": 31 * 24 * 3600}, ValueError),
        ({"timeout": "60"}, TypeError),
        ({"max_attempts": 0}, ValueError),
        ({"max_attempts": 101}, ValueError),
        ({"max_attempts": 2.0}, TypeError),
    ],
)
def test_bad_submit_input_raises_and_writes_nothing(
    client: Client, rclient: redis.Redis, keys: Keys, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    args: dict[str, Any] = {"spec": SPEC, **kwargs}
    with pytest.raises(error, match=r"spec|payload|priority|timeout|max_attempts"):
        client.submit(args.pop("spec"), **args)
    assert namespace_keys(rclient, keys) == []


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-job", "x:y"])
def test_get_of_an_unknown_job_raises_key_error(client: Client, job_id: str) -> None:
    with pytest.raises(KeyError, match="no such job"):
        client.get(job_id)


def test_ready_runner_takes_larger_priority_first_then_older(
    client: Client, rclient: redis.Redis, keys: Keys
) -> None:
    low, high1, mid, high2, neg = (client.submit(SPEC, priority=p) for p in (0, 5, 1, 5, -3))
    pod = FakePod(rclient, keys)
    assert [pod.run_next()[0] for _ in range(5)] == [high1, high2, mid, low, neg]


def test_submit_goes_straight_to_an_idle_runner(
    client: Client, rclient: redis.Redis, keys: Keys
) -> None:
    pod = FakePod(rclient, keys)
    assert pod.ready() == {"result": "idle"}
    record = client.get(client.submit(SPEC))
    assert (record["status"], record["runner"], record["attempt"]) == ("claimed", "r1", 1)


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_pending_job_then_again(client: Client, raw: redis.Redis, keys: Keys) -> None:
    job_id = client.submit(SPEC)
    assert client.cancel(job_id) is True
    assert client.get(job_id)["status"] == "canceled"
    assert client.cancel(job_id) is False
    assert raw.zcard(keys.pending(SPEC)) == 0
    # the result writers are told once, through the outbox, with the attempt as stored (0:
    # never dispatched)
    assert raw.zrange(keys.outbox, 0, -1) == [f"{job_id}:0".encode()]


def test_cancel_of_a_running_job_frees_its_runner(
    client: Client, rclient: redis.Redis, keys: Keys
) -> None:
    job_id = client.submit(SPEC)
    pod = FakePod(rclient, keys)
    pod.take()
    assert client.cancel(job_id) is True
    assert rclient.hget(keys.runner("r1"), "job") == ""
    assert rclient.sismember(keys.pod_inbox(POD), "r1")  # the pod is told to push `cancel`


def test_cancel_of_a_final_job_returns_false(
    client: Client, rclient: redis.Redis, keys: Keys
) -> None:
    job_id = client.submit(SPEC)
    FakePod(rclient, keys).run_next("failed")
    assert client.cancel(job_id) is False
    assert client.get(job_id)["status"] == "failed"


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "nonsense"])
def test_cancel_of_an_unknown_job_raises_key_error(client: Client, job_id: str) -> None:
    with pytest.raises(KeyError, match="no such job"):
        client.cancel(job_id)


# -- wait --------------------------------------------------------------------------------------


def test_wait_returns_once_the_result_is_processed(
    client: Client, rclient: redis.Redis, raw: redis.Redis, keys: Keys
) -> None:
    client.recheck_interval = 60  # so only the done channel can wake the waiter in time
    job_id = client.submit(SPEC)
    pod = FakePod(rclient, keys)

    def finish() -> None:
        _, attempt = pod.run_next()
        time.sleep(0.1)  # `completed` is not final for a producer: wait goes on
        process_result(keys.namespace, job_id, attempt, connection=raw)

    started = time.monotonic()
    thread = later(0.2, finish)
    record = client.wait(job_id, timeout=30)
    assert record["status"] == "processed" and record["stdout"] == "out\n"
    assert time.monotonic() - started < 10  # woken by the done channel, not the 60 s re-check
    thread.join()


def test_wait_returns_at_once_for_a_final_job(client: Client) -> None:
    job_id = client.submit(SPEC)
    client.cancel(job_id)
    assert client.wait(job_id, timeout=0.5)["status"] == "canceled"


def test_wait_raises_timeout_error_when_the_job_stays_unfinished(client: Client) -> None:
    job_id = client.submit(SPEC)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.wait(job_id, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5


def test_wait_with_zero_timeout_looks_once(client: Client) -> None:
    job_id = client.submit(SPEC)
    with pytest.raises(TimeoutError):
        client.wait(job_id, timeout=0)
    client.cancel(job_id)
    assert client.wait(job_id, timeout=0)["status"] == "canceled"


def test_wait_for_an_unknown_job_raises_key_error(client: Client) -> None:
    with pytest.raises(KeyError):
        client.wait(str(uuid.uuid4()), timeout=1)


def test_wait_rechecks_when_a_notice_is_lost(
    client: Client, rclient: redis.Redis, keys: Keys
) -> None:
    client.recheck_interval = 0.2
    job_id = client.submit(SPEC)
    # a status change without a PUBLISH, as if the message had been lost
    thread = later(0.1, lambda: rclient.hset(keys.job(job_id), "status", "failed"))
    assert client.wait(job_id, timeout=3)["status"] == "failed"
    thread.join()


# -- events and status -------------------------------------------------------------------------


def test_events_follow_one_job(client: Client) -> None:
    other, job_id = client.submit(SPEC), client.submit(SPEC)
    client.cancel(job_id)
    events = client.events(job_id, since="0", block=0.5)
    first, second = next(events), next(events)
    assert (first["event"], second["event"]) == ("submitted", "canceled")
    assert {first["job"], second["job"]} == {job_id} != {other}
    assert first["id"] < second["id"]


def test_status_reports_what_the_keys_hold(
    client: Client, rclient: redis.Redis, keys: Keys
) -> None:
    client.submit("mac")
    client.submit("mac", priority=3)
    pod = FakePod(rclient, keys)
    assert pod.ready() == {"result": "idle"}
    busy_job = client.submit(SPEC)
    snapshot = client.status()
    assert snapshot["namespace"] == keys.namespace
    assert snapshot["specs"] == {
        "linux": {"pending": 0, "idle_runners": 0},
        "mac": {"pending": 2, "idle_runners": 0},
    }
    assert snapshot["runners"] == {"total": 1, "idle": 0, "busy": 1, "offline": 0}
    assert snapshot["pods"] == [POD]
    assert snapshot["leases"] == 1
    assert snapshot["counters"]["submitted"] == 3 and snapshot["counters"]["dispatched"] == 1
    client.cancel(busy_job)
    results = client.status()["results"]
    assert results == {
        "queue": keys.results_queue,
        "outbox": 1,  # the cancel's outcome, waiting for a pump (no pod runs here)
        "outbox_due": 1,
        "queued": 0,
        "retrying": 0,
        "failed": 0,
    }


def test_from_env_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, namespace: str
) -> None:
    monkeypatch.setenv("DISPATCHER_REDIS_URL", redis_url)
    monkeypatch.setenv("DISPATCHER_NAMESPACE", namespace)
    with Client.from_env() as c:
        assert c.keys.namespace == namespace
        assert c.get(c.submit(SPEC))["status"] == "pending"
    aclient = AsyncClient.from_env()
    assert aclient.keys.namespace == namespace and aclient.settings.redis_url == redis_url


# -- AsyncClient -------------------------------------------------------------------------------


async def test_async_client_submit_get_cancel_wait(settings: Settings) -> None:
    async with AsyncClient(settings) as client:
        job_id = await client.submit(SPEC, {"command": ["true"]}, priority=2)
        assert (await client.get(job_id))["priority"] == 2
        waiter = asyncio.create_task(client.wait(job_id, timeout=5))
        await asyncio.sleep(0.05)
        assert await client.cancel(job_id) is True
        assert (await waiter)["status"] == "canceled"
        assert await client.cancel(job_id) is False
        assert (await client.status())["counters"]["canceled"] == 1


async def test_async_client_errors(settings: Settings) -> None:
    async with AsyncClient(settings) as client:
        with pytest.raises(ValueError, match="timeout"):
            await client.submit(SPEC, timeout=-1)
        with pytest.raises(KeyError):
            await client.get(str(uuid.uuid4()))
        with pytest.raises(KeyError):
            await client.cancel(str(uuid.uuid4()))
        with pytest.raises(KeyError):
            await client.wait(str(uuid.uuid4()), timeout=1)
        job_id = await client.submit(SPEC)
        with pytest.raises(TimeoutError):
            await client.wait(job_id, timeout=0.2)


class ConnectionSampler:
    """Counts, from another thread, the Redis connections named after one client."""

    def __init__(self, redis_url: str, name: str) -> None:
        self.name, self.peak = name, 0
        self._redis = redis.Redis.from_url(redis_url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            count = sum(1 for c in self._redis.client_list() if c.get("name") == self.name)
            self.peak = max(self.peak, count)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self._redis.close()
        return self.peak


async def test_async_client_takes_1000_concurrent_submits_and_waits(
    settings: Settings, rclient: redis.Redis, raw: redis.Redis, keys: Keys, redis_url: str
) -> None:
    sampler = ConnectionSampler(redis_url, f"dispatcher-client:{keys.namespace}")
    async with AsyncClient(settings, max_connections=16) as client:
        ids = await asyncio.gather(*(client.submit(SPEC, {"n": n}) for n in range(1000)))
        assert len(set(ids)) == 1000
        waits = [asyncio.create_task(client.wait(job_id, timeout=30)) for job_id in ids]
        await asyncio.sleep(0.1)  # the waiters are parked on the shared subscription

        def run_all() -> None:
            pod = FakePod(rclient, keys)
            for n in range(1000):
                status = "completed" if n % 2 == 0 else "failed"
                job_id, attempt = pod.run_next(status)
                if status == "completed":
                    process_result(keys.namespace, job_id, attempt, connection=raw)

        await asyncio.to_thread(run_all)
        records = await asyncio.gather(*waits)
    peak = sampler.stop()
    assert [r["id"] for r in records] == ids
    assert {r["status"] for r in records} == {"processed", "failed"}
    assert 1 <= peak <= 16  # 16 pooled connections, the shared pub/sub one among them


def pubsub_ids(rclient: redis.Redis, name: str) -> list[str]:
    """Ids of the pub/sub connections of the client named ``name``."""
    return [c["id"] for c in rclient.client_list() if c.get("name") == name and "P" in c["flags"]]


def until_subscribed(rclient: redis.Redis, name: str, other_than: str = "") -> str:
    """Wait (up to 10 s) until ``name`` has one pub/sub connection, not ``other_than``; its id."""
    deadline = time.monotonic() + 10
    while True:
        ids = pubsub_ids(rclient, name)
        if len(ids) == 1 and ids[0] != other_than:
            return ids[0]
        assert time.monotonic() < deadline, f"{name} not subscribed: {ids}"
        time.sleep(0.02)


def kill_pubsub_connection(rclient: redis.Redis, name: str) -> str:
    """Kill one client's pub/sub connection (only that one: other tests may share the Redis),
    once it exists; return its id."""
    killed = until_subscribed(rclient, name)
    rclient.client_kill_filter(_id=killed)
    return killed


async def test_async_waiters_survive_a_killed_subscription(
    settings: Settings, rclient: redis.Redis, keys: Keys
) -> None:
    async with AsyncClient(settings) as client:
        client.recheck_interval = 60  # so only the done channel can wake the waiter in time
        job_id = await client.submit(SPEC)
        waiter = asyncio.create_task(client.wait(job_id, timeout=30))
        name = f"dispatcher-client:{keys.namespace}"
        killed = await asyncio.to_thread(kill_pubsub_connection, rclient, name)
        await asyncio.to_thread(until_subscribed, rclient, name, other_than=killed)
        started = time.monotonic()
        assert await client.cancel(job_id)
        assert (await waiter)["status"] == "canceled"
        assert time.monotonic() - started < 10  # the done channel, not the 60 s re-check
        second = await client.submit(SPEC)
        thread = later(0.1, lambda: functions.run_sync(rclient, functions.cancel(keys, second)))
        assert (await client.wait(second, timeout=5))["status"] == "canceled"
        thread.join()


def test_sync_wait_survives_a_killed_subscription(
    client: Client, rclient: redis.Redis, keys: Keys
) -> None:
    client.recheck_interval = 60
    job_id = client.submit(SPEC)

    def kill_then_cancel() -> None:
        kill_pubsub_connection(rclient, f"dispatcher-client:{keys.namespace}")  # once it exists
        time.sleep(0.3)  # the scenario: the cancel comes while the waiter may still be away
        client.cancel(job_id)

    started = time.monotonic()
    thread = later(0.2, kill_then_cancel)
    assert client.wait(job_id, timeout=30)["status"] == "canceled"
    assert time.monotonic() - started < 10  # not the 60 s re-check
    thread.join()


async def test_async_client_takes_1000_concurrent_cancels(
    settings: Settings, raw: redis.Redis, keys: Keys, redis_url: str
) -> None:
    sampler = ConnectionSampler(redis_url, f"dispatcher-client:{keys.namespace}")
    async with AsyncClient(settings, max_connections=8) as client:
        ids = await asyncio.gather(*(client.submit(SPEC) for _ in range(1000)))
        assert all(await asyncio.gather(*(client.cancel(job_id) for job_id in ids)))
        assert await client.wait(ids[-1], timeout=0)
    assert 1 <= sampler.stop() <= 8  # the pool only: cancel writes the outbox in its own call
    assert raw.zcard(keys.outbox) == 1000
