"""The rq queues on their own Redis (DISPATCHER_RESULTS_REDIS_URL): the outbox stays with the
namespace, the pump measures the queues there and enqueues there, the writer records through the
namespace's Redis. Here the "other Redis" is another database of the test server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from rq import Queue, SimpleWorker

from dispatcher import functions
from dispatcher.errors import ConfigError
from dispatcher.keys import Keys
from dispatcher.results import PumpConfig, pump_once
from dispatcher.settings import Settings
from tests.jobflow import SPEC, FakePod
from worker_bridge.tasks import WriterContext


def other_db(url: str) -> str:
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(db + 1) % 16}"))


@pytest.fixture
def tagged(redis_url: str) -> Iterator[Keys]:
    keys = Keys("{t" + uuid.uuid4().hex[:12] + "}")
    yield keys
    for url in (redis_url, other_db(redis_url)):
        with redis.Redis.from_url(url) as client:
            names = list(client.scan_iter(match=f"*{keys.namespace.strip('{}')}*", count=1000))
            if names:
                client.delete(*names)
            client.srem("rq:queues", Keys.rq_queue(keys.results_queue))


def test_a_tagged_namespace_is_accepted_and_required_on_a_cluster() -> None:
    assert Settings(namespace="{fleet}").namespace == "{fleet}"
    for bad in ("{fleet", "fleet}", "{}", "{a:b}", "{" + "x" * 63 + "}"):
        with pytest.raises(ConfigError, match="namespace"):
            Settings(namespace=bad)
    cluster = "redis+cluster://127.0.0.1:7000"
    with pytest.raises(ConfigError, match=r"hash-tagged: DISPATCHER_NAMESPACE=\{fleet\}"):
        Settings(redis_url=cluster, namespace="fleet")
    with pytest.raises(ConfigError, match="DISPATCHER_RESULTS_REDIS_URL"):
        Settings(redis_url=cluster, namespace="{fleet}")
    with pytest.raises(ConfigError, match="cannot be a cluster"):
        Settings(redis_url=cluster, namespace="{fleet}", results_redis_url=cluster)
    ok = Settings(redis_url=cluster, namespace="{fleet}", results_redis_url="redis://q:6379/0")
    assert ok.rq_redis_url == "redis://q:6379/0"
    assert Settings().rq_redis_url == Settings().redis_url


def test_batch_job_ids_are_ones_rq_accepts() -> None:
    job_id = Keys("{fleet}").batch_job_id("results", "abc")
    assert job_id == "fleet-results-abc"
    Queue.prepare_data("x.y", job_id=job_id)  # rq refuses braces in job ids


def test_results_through_their_own_redis(redis_url: str, tagged: Keys) -> None:
    keys = tagged
    ours = redis.Redis.from_url(redis_url, decode_responses=True)
    rq_redis = redis.Redis.from_url(other_db(redis_url))
    try:
        ids = [
            functions.run_sync(ours, functions.submit(keys, "", SPEC, json.dumps({}), 0, 60, 1))
            for _ in range(3)
        ]
        pod = FakePod(ours, keys)
        done = [pod.run_next("completed") for _ in ids]
        config = PumpConfig(batch_size=2, max_queued=1)
        first = pump_once(ours, keys, config, rq_connection=rq_redis)
        assert first.results == 3 and first.batches == 2
        queue = Keys.rq_queue(keys.results_queue)
        assert rq_redis.llen(queue) == 2 and not ours.exists(queue)
        # the queue holds max_queued batches already: measured there, so nothing more is taken
        ours.zadd(keys.outbox, {"x:1": 0})
        assert pump_once(ours, keys, config, rq_connection=rq_redis).more is True
        ours.zrem(keys.outbox, "x:1")
        ctx = WriterContext(Settings(namespace=keys.namespace), namespace_redis=ours)
        from worker_bridge import tasks

        tasks.install_context(ctx)
        try:
            worker = SimpleWorker(
                [Queue(keys.results_queue, connection=rq_redis)], connection=rq_redis
            )
            assert worker.work(burst=True)
        finally:
            tasks._context = None
        for job_id, _ in done:
            assert ours.hget(keys.job(job_id), "status") == "processed"
        assert not ours.exists(keys.outbox)
    finally:
        ours.close()
        rq_redis.close()
