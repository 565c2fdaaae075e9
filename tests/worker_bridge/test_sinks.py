"""The postgres and webhook sinks against a real PostgreSQL and a real local HTTP server: batches
written idempotently, failures retried through rq without holding back the Redis side or each
other, and bad settings refused at start in one line."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from rq import Queue, SimpleWorker
from rq.registry import FailedJobRegistry

from dispatcher import functions
from dispatcher.keys import Keys
from dispatcher.results import PumpConfig, pump_once
from dispatcher.settings import Settings
from tests.dispatcher.support import RClient
from tests.jobflow import SPEC, FakePod
from tests.netkit import TcpProxy
from tests.worker_bridge.httpkit import HookServer
from worker_bridge.sinks import SinkFailure
from worker_bridge.sinks.postgres import PostgresSink
from worker_bridge.sinks.webhook import DELIVERY_HEADER, SIGNATURE_HEADER
from worker_bridge.tasks import WriterContext, process_batch, sink_batch

BIN = Path(sys.executable).parent
SECRET = "s3cret"


def final_jobs(rclient: RClient, keys: Keys, statuses: list[str]) -> list[str]:
    """Jobs run to these statuses by a fake pod; their outbox entries."""
    pod = FakePod(rclient, keys)
    entries = []
    for status in statuses:
        payload = json.dumps({"command": ["true"]})
        functions.run_sync(rclient, functions.submit(keys, "", SPEC, payload, 0, 60, 1))
        job_id, attempt = pod.run_next(status)
        entries.append(f"{job_id}:{attempt}")
    return entries


def sinkbox(rclient: RClient, keys: Keys, sink: str) -> list[str]:
    return list(rclient.zrange(keys.sinkbox(sink), 0, -1))


def work(raw: redis.Redis, name: str) -> None:
    """A real rq worker, in this process, in burst mode on one queue."""
    SimpleWorker([Queue(name, connection=raw)], connection=raw).work(
        burst=True, logging_level="WARNING"
    )


# -- postgres -------------------------------------------------------------------------------------


@pytest.fixture
def pg(postgres_url: str, keys: Keys) -> Iterator[PostgresSink]:
    sink = PostgresSink(postgres_url)
    sink.init_db()
    yield sink
    sink.close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("DELETE FROM dispatcher_jobs WHERE namespace = %s", (keys.namespace,))


def rows(url: str, keys: Keys) -> dict[str, tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT job_id, status, attempt, runner, exit_code, error, results, stdout_tail,"
            " finished_at IS NOT NULL, processed_at IS NOT NULL"
            " FROM dispatcher_jobs WHERE namespace = %s",
            (keys.namespace,),
        ).fetchall()
    return {str(r[0]): tuple(r[1:]) for r in found}


def test_postgres_gets_one_row_per_job_and_a_batch_twice_changes_nothing(
    rclient: RClient, raw: redis.Redis, keys: Keys, pg: PostgresSink, postgres_url: str
) -> None:
    ctx = WriterContext(Settings(), {"postgres": pg})
    entries = final_jobs(rclient, keys, ["completed", "failed"])
    assert process_batch(keys.namespace, entries, connection=raw, ctx=ctx)["recorded"] == 2
    assert sorted(sinkbox(rclient, keys, "postgres")) == sorted(entries)
    # the same results batch again (re-pumped): nothing new reaches the sink's box
    assert process_batch(keys.namespace, entries, connection=raw, ctx=ctx)["recorded"] == 0
    assert sink_batch(keys.namespace, "postgres", entries, connection=raw, ctx=ctx)["written"] == 2
    assert sinkbox(rclient, keys, "postgres") == []
    first = rows(postgres_url, keys)
    done, failed = (e.rpartition(":")[0] for e in entries)
    assert first[done] == ("processed", 1, "r1", 0, "", None, "out\n", True, True)
    assert first[failed] == ("failed", 1, "r1", 1, "boom", None, "out\n", True, False)
    # a duplicate sink batch (rq retry, or a re-pump) writes the same rows again
    sink_batch(keys.namespace, "postgres", entries, connection=raw, ctx=ctx)
    assert rows(postgres_url, keys) == first


def test_postgres_down_then_back(
    rclient: RClient, raw: redis.Redis, keys: Keys, pg: PostgresSink, postgres_url: str
) -> None:
    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    proxy = TcpProxy((str(info.get("host", "127.0.0.1")), int(str(info.get("port", 5432)))))
    via_proxy = psycopg.conninfo.make_conninfo(postgres_url, host="127.0.0.1", port=proxy.port)
    sink = PostgresSink(via_proxy)
    ctx = WriterContext(Settings(), {"postgres": sink})
    entries = final_jobs(rclient, keys, ["completed"])
    process_batch(keys.namespace, entries, connection=raw, ctx=ctx)
    with pytest.raises(SinkFailure, match="postgres"):
        sink_batch(keys.namespace, "postgres", entries, connection=raw, ctx=ctx)  # down
    assert sinkbox(rclient, keys, "postgres") == entries  # kept for the retry
    assert rows(postgres_url, keys) == {}
    proxy.up()
    try:
        sink_batch(keys.namespace, "postgres", entries, connection=raw, ctx=ctx)
        assert len(rows(postgres_url, keys)) == 1
        proxy.down()  # a connection cut under the sink: it reconnects on the next batch
        proxy.up()
        sink_batch(keys.namespace, "postgres", entries, connection=raw, ctx=ctx)
    finally:
        proxy.down()
        sink.close()
    assert sinkbox(rclient, keys, "postgres") == []
    assert rclient.hget(keys.job(entries[0].rpartition(":")[0]), "status") == "processed"


# -- webhook --------------------------------------------------------------------------------------


def webhook_ctx(hook: HookServer, timeout: float = 5.0) -> WriterContext:
    settings = Settings(
        sinks="webhook", webhook_url=hook.url, webhook_secret=SECRET, webhook_timeout=timeout
    )
    return WriterContext.build(settings)


def test_webhook_posts_each_final_job_signed(
    rclient: RClient, raw: redis.Redis, keys: Keys, hook: HookServer
) -> None:
    ctx = webhook_ctx(hook)
    entries = final_jobs(rclient, keys, ["completed", "canceled"])
    process_batch(keys.namespace, entries, connection=raw, ctx=ctx)
    sink_batch(keys.namespace, "webhook", entries, connection=raw, ctx=ctx)
    assert len(hook.received) == 2 and sinkbox(rclient, keys, "webhook") == []
    for got, entry in zip(hook.received, entries, strict=True):
        expected = "sha256=" + hmac.new(SECRET.encode(), got.body, hashlib.sha256).hexdigest()
        assert got.headers[SIGNATURE_HEADER] == expected
        doc = json.loads(got.body)
        assert (doc["namespace"], f"{doc['job_id']}:{doc['attempt']}") == (keys.namespace, entry)
        assert got.headers[DELIVERY_HEADER] == f"{keys.namespace}:{entry}:{doc['status']}"
    first, second = (json.loads(r.body) for r in hook.received)
    assert (first["status"], first["exit_code"], first["stdout"]) == ("processed", 0, "out\n")
    assert first["finished"].endswith("Z") and first["processed"].endswith("Z")
    assert (second["status"], second["cancel_reason"]) == ("canceled", "runner")


def test_webhook_failing_twice_then_succeeding_delivers_each_job_once(
    rclient: RClient, raw: redis.Redis, keys: Keys, hook: HookServer
) -> None:
    """Through the pump and a real rq worker with rq's Retry (intervals 0 here): the first job is
    delivered, the second fails twice, and only the second is sent again."""
    ctx = webhook_ctx(hook)
    entries = final_jobs(rclient, keys, ["completed", "completed"])
    process_batch(keys.namespace, entries, connection=raw, ctx=ctx)
    hook.statuses = [200, 500, 503]  # job 1 ok; job 2 refused twice, then accepted
    config = PumpConfig(sink_retry=(0, 0, 0))
    assert pump_once(raw, keys, config).sinks == 2
    import worker_bridge.tasks as tasks

    tasks.install_context(ctx)  # the worker's tasks use this process's context
    try:
        work(raw, keys.sink_queue("webhook"))
    finally:
        tasks.install_context(tasks.WriterContext.build(Settings()))
    delivered = [json.loads(r.body)["job_id"] for r in hook.received]
    assert sorted(delivered) == sorted(e.rpartition(":")[0] for e in entries)  # each once
    assert hook.attempts == 4
    assert sinkbox(rclient, keys, "webhook") == []
    assert FailedJobRegistry(keys.sink_queue("webhook"), connection=raw).count == 0


def test_a_hanging_webhook_ends_in_the_failed_registry_and_never_holds_back_redis(
    rclient: RClient, raw: redis.Redis, keys: Keys, hook: HookServer
) -> None:
    hook.hang = 1.0
    ctx = webhook_ctx(hook, timeout=0.2)
    entries = final_jobs(rclient, keys, ["completed"])
    # the Redis side does not wait for any sink
    assert process_batch(keys.namespace, entries, connection=raw, ctx=ctx)["recorded"] == 1
    assert rclient.hget(keys.job(entries[0].rpartition(":")[0]), "status") == "processed"
    assert pump_once(raw, keys, PumpConfig(sink_retry=(0,))).sinks == 1
    import worker_bridge.tasks as tasks

    tasks.install_context(ctx)
    try:
        work(raw, keys.sink_queue("webhook"))  # a try, then its one retry: both time out
    finally:
        tasks.install_context(tasks.WriterContext.build(Settings()))
    # two tries, each given up after 0.2 s (the server, answering late, saw both: receivers
    # drop repeats by the delivery header)
    assert hook.attempts == 2
    # the server answers both late (after the writer gave up on them): wait for that, so the
    # count below is not raced by a late answer
    deadline = time.monotonic() + 10
    while len(hook.received) < 2:
        assert time.monotonic() < deadline, "the hanging server never answered"
        time.sleep(0.02)
    failed = FailedJobRegistry(keys.sink_queue("webhook"), connection=raw)
    assert failed.count == 1
    # parked in the box (never due) until an operator requeues the batch
    assert rclient.zrange(keys.sinkbox("webhook"), 0, -1, withscores=True) == [
        (entries[0], float("inf"))
    ]
    assert pump_once(raw, keys, PumpConfig()).sinks == 0
    hook.hang = 0.0
    failed.requeue(failed.get_job_ids()[0])  # what `rq requeue` does
    tasks.install_context(ctx)
    try:
        work(raw, keys.sink_queue("webhook"))
    finally:
        tasks.install_context(tasks.WriterContext.build(Settings()))
    assert hook.attempts == 3 and len(hook.received) == 3
    assert sinkbox(rclient, keys, "webhook") == []


# -- settings -------------------------------------------------------------------------------------


def bridge(redis_url: str, keys: Keys, env: dict[str, str], *args: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    done = subprocess.run(
        [str(BIN / "worker-bridge"), "--burst", "--redis-url", redis_url, *args],
        env={**clean, "DISPATCHER_NAMESPACE": keys.namespace, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DISPATCHER_SINKS": "kafka"}, "unknown sink 'kafka'"),
        ({"DISPATCHER_SINKS": "postgres"}, "DISPATCHER_POSTGRES_URL is unset"),
        ({"DISPATCHER_SINKS": "webhook"}, "DISPATCHER_WEBHOOK_URL is unset"),
        (
            {"DISPATCHER_SINKS": "webhook", "DISPATCHER_WEBHOOK_URL": "ftp://x", "X": ""},
            "is not an http(s) URL",
        ),
        (
            {"DISPATCHER_SINKS": "webhook", "DISPATCHER_WEBHOOK_URL": "http://127.0.0.1:9/"},
            "DISPATCHER_WEBHOOK_SECRET is unset",
        ),
        ({"DISPATCHER_SINK_RETRY": "1,soon"}, "DISPATCHER_SINK_RETRY"),
        ({"DISPATCHER_RESULT_BATCH_SIZE": "0"}, "result_batch_size"),
        (
            {
                "DISPATCHER_SINKS": "postgres",
                "DISPATCHER_POSTGRES_URL": "postgresql://postgres@127.0.0.1:9/none",
            },
            "PostgreSQL at 127.0.0.1:9/none",
        ),
    ],
)
def test_bad_sink_settings_are_one_line_at_start(
    redis_url: str, keys: Keys, env: dict[str, str], message: str
) -> None:
    code, err = bridge(redis_url, keys, env)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("worker-bridge: ") and message in err, err


def test_a_missing_table_names_init_db_and_init_db_creates_it(
    redis_url: str, keys: Keys, postgres_url: str
) -> None:
    schema = f"s_{keys.namespace}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = psycopg.conninfo.make_conninfo(postgres_url, options=f"-csearch_path={schema}")
    env = {"DISPATCHER_SINKS": "postgres", "DISPATCHER_POSTGRES_URL": url}
    try:
        code, err = bridge(redis_url, keys, env)
        assert code == 1 and "run `worker-bridge --init-db` once" in err, err
        code, err = bridge(redis_url, keys, env, "--init-db")
        assert code == 0, err
        code, err = bridge(redis_url, keys, env)
        assert code == 0, err  # checked, then the burst finds nothing to do
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
