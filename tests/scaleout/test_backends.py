"""The core scenarios on a Redis Cluster (3 primaries, rq on its own Redis) and on Sentinel:
real pods in this process, runners over WebSockets, the producer client, the pump and an rq
writer. The same code path as standalone; only the URLs differ."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from dispatcher import admin, functions, redisconn, redisurl
from dispatcher.client import AsyncClient, Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from dispatcher.tokens import new_token, token_hash
from tests.dispatcher.conftest import stop_pod
from tests.dispatcher.support import (
    SPEC,
    complete,
    eventually,
    expect_ack,
    expect_cancel,
    start_job,
    take_job,
)
from tests.jobflow import FakePod
from tests.podkit import RunningPod, connect, start_pod
from tests.scaleout.conftest import Backend, backend_settings

pytestmark = pytest.mark.timeout(120)
BIN = Path(sys.executable).parent


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return backend_settings(backend, reconcile_interval=0.2)


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    rclient = redisconn.sync_client(settings.redis_url, decode_responses=True)
    yield rclient
    rclient.close()


@pytest.fixture
async def pods(settings: Settings) -> AsyncIterator[tuple[RunningPod, RunningPod]]:
    a = await start_pod(settings)
    b = await start_pod(settings)
    yield a, b
    await asyncio.gather(stop_pod(a), stop_pod(b))


def add_runner(client: redis.Redis, settings: Settings, name: str) -> str:
    token = new_token()
    call = functions.runner_add(Keys(settings.namespace), name, token_hash(token), [SPEC])
    functions.run_sync(client, call)
    return token


def status(client: redis.Redis, keys: Keys, job_id: str) -> str:
    return str(client.hget(keys.job(job_id), "status"))


async def run_writer(settings: Settings) -> None:
    """``worker-bridge --burst``: a writer process drains the results queue once."""
    env = {
        **os.environ,
        "DISPATCHER_REDIS_URL": settings.redis_url,
        "DISPATCHER_RESULTS_REDIS_URL": settings.results_redis_url,
        "DISPATCHER_NAMESPACE": settings.namespace,
    }
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "worker-bridge"),
        "--burst",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, output.decode()


def each_node(settings: Settings) -> list[redis.Redis]:
    """A plain client of every data node holding the namespace (its primary, or every primary)."""
    target = redisurl.parse(settings.redis_url)
    if target.cluster:
        cluster = redis.RedisCluster(host=target.hosts[0][0], port=target.hosts[0][1])
        nodes = [redis.Redis(host=n.host, port=n.port) for n in cluster.get_primaries()]
        cluster.close()
        return nodes
    return [redisconn.sync_client(settings.redis_url)]


async def test_lifecycle_through_pump_and_writer(pods, settings, client) -> None:
    a, _ = pods
    keys = Keys(settings.namespace)
    runner = await connect(a, "r1", add_runner(client, settings, "r1"))
    producer = AsyncClient(settings)
    try:
        job_id = await producer.submit(SPEC, {"command": ["true"]}, timeout=60)
        job = await take_job(runner)
        assert job["job"] == job_id and status(client, keys, job_id) == "claimed"
        await start_job(runner, job)
        assert status(client, keys, job_id) == "running"
        await complete(runner, job)
        assert status(client, keys, job_id) == "completed"
        rq_redis = redisconn.sync_client(settings.rq_redis_url)
        queue = Keys.rq_queue(keys.results_queue)
        await eventually(lambda: rq_redis.llen(queue) > 0, 10.0, what="a batch queued by the pump")
        rq_redis.close()
        await run_writer(settings)
        record = await producer.wait(job_id, timeout=30)  # the done channel (sharded pub/sub)
        assert record["status"] == "processed"
    finally:
        await producer.close()
        await runner.close()


async def test_cancel_is_pushed_to_the_runners_pod(pods, settings, client) -> None:
    _, b = pods
    runner = await connect(b, "r1", add_runner(client, settings, "r1"))
    producer = Client(settings)
    try:
        job_id = producer.submit(SPEC, {"command": ["sleep", "60"]}, timeout=60)
        job = await take_job(runner)
        await start_job(runner, job)
        assert producer.cancel(job_id)
        await expect_cancel(runner, job_id, 1, "canceled", timeout=5)
        assert producer.wait(job_id, timeout=10)["status"] == "canceled"
    finally:
        producer.close()
        await runner.close()


async def test_reattach_on_another_pod(pods, settings, client) -> None:
    a, b = pods
    keys = Keys(settings.namespace)
    token = add_runner(client, settings, "r1")
    on_a = await connect(a, "r1", token)
    job_id = Client(settings, client).submit(SPEC, {}, timeout=60)
    job = await take_job(on_a)
    await start_job(on_a, job)
    await on_a.close()
    await eventually(lambda: client.hget(keys.runner("r1"), "pod") == "", 10.0, what="detach")
    on_b = await connect(b, "r1", token)
    try:
        await on_b.send("running", job=job_id, attempt=1)
        await expect_ack(on_b, job_id, "running")
        assert client.hget(keys.runner("r1"), "pod") == b.id
        await complete(on_b, job)
        assert status(client, keys, job_id) == "completed"
    finally:
        await on_b.close()


async def test_a_lost_doorbell_is_recovered(pods, settings, client) -> None:
    a, _ = pods
    keys = Keys(settings.namespace)
    runner = await connect(a, "r1", add_runner(client, settings, "r1"))
    try:
        await runner.send("ready", poll_timeout=20)
        await eventually(lambda: a.server.pod.doorbell.live, 10.0, what="doorbell subscribed")
        await eventually(
            lambda: client.zscore(keys.idle(SPEC), "r1") is not None, 10.0, what="runner idle"
        )
        killed = 0
        for node in each_node(settings):
            killed += int(node.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
            node.close()
        assert killed >= 1
        job_id = Client(settings, client).submit(SPEC, {}, timeout=60)
        job = await runner.expect("job", 10.0)  # resubscribe or reconcile tick rings it
        assert job["job"] == job_id
    finally:
        await runner.close()


def test_fencing(settings, client) -> None:
    keys = Keys(settings.namespace)
    first = FakePod(client, keys, "r1")
    other = FakePod(client, keys, "r2")
    job_id = functions.run_sync(client, functions.submit(keys, "", SPEC, "{}", 0, 60, 2))
    taken, attempt = first.take()
    assert taken == job_id
    assert other.finish(job_id, attempt)["result"] == "stale"  # not its job
    assert first.finish(job_id, attempt + 1)["result"] == "stale"  # not its attempt
    assert first.finish(job_id, attempt)["result"] == "recorded"
    assert first.finish(job_id, attempt)["result"] == "duplicate"
    assert admin.list_runners(client, keys)


def test_settings_of_the_backend_are_complete(backend: Backend, settings: Settings) -> None:
    assert dataclasses.replace(settings).redis_url == backend.redis_url
    if backend.tagged:
        assert settings.namespace.startswith("{")
