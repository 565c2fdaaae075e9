"""The result tasks (one result, a batch) and the workers that run them, against a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from rq import Queue

from dispatcher import functions
from dispatcher.errors import ConfigError
from dispatcher.keys import Keys
from dispatcher.results import PumpConfig, pump_once
from dispatcher.settings import Settings
from tests.jobflow import SPEC, FakePod
from worker_bridge.tasks import WriterContext, context, process_batch, process_result

BIN = Path(sys.executable).parent


CTX = WriterContext(Settings())  # default retention, no sinks


def submit(rclient: redis.Redis, keys: Keys, job_id: str = "", max_attempts: int = 1) -> str:
    payload = json.dumps({"command": ["true"]})
    call = functions.submit(keys, job_id, SPEC, payload, 0, 60, max_attempts)
    return functions.run_sync(rclient, call)


def events(rclient: redis.Redis, keys: Keys, job_id: str, name: str) -> list[dict[str, str]]:
    entries: list[tuple[str, dict[str, str]]] = rclient.xrange(keys.events)  # type: ignore[assignment]
    return [
        fields
        for _, fields in entries
        if fields.get("job") == job_id and fields.get("event") == name
    ]


def completed_job(rclient: redis.Redis, keys: Keys) -> tuple[str, int]:
    submit(rclient, keys)
    return FakePod(rclient, keys).run_next("completed")


def test_completed_becomes_processed_once(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys
) -> None:
    job_id, attempt = completed_job(rclient, keys)
    pubsub = rclient.pubsub()
    pubsub.ssubscribe(keys.done_channel)
    assert pubsub.get_message(timeout=1)["type"] == "ssubscribe"
    assert process_result(keys.namespace, job_id, attempt, connection=raw, ctx=CTX) == "processed"
    assert process_result(keys.namespace, job_id, attempt, connection=raw, ctx=CTX) == "processed"
    assert rclient.hget(keys.job(job_id), "status") == "processed"
    assert len(events(rclient, keys, job_id, "processed")) == 1
    assert rclient.hget(keys.stats, "processed") == "1"
    message = pubsub.get_message(timeout=1)
    assert message is not None and message["data"] == job_id  # waiting producers are told
    assert 0 < rclient.ttl(keys.job(job_id)) <= 7 * 24 * 3600
    pubsub.close()


def test_a_stale_attempt_changes_nothing(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys
) -> None:
    job_id = submit(rclient, keys, max_attempts=2)
    pod = FakePod(rclient, keys)
    first = pod.take()
    # rule 1: the runner says `ready` while holding the job, so attempt 1 ends and the same
    # runner gets attempt 2
    assert pod.ready()["attempt"] == 2
    pod.finish(job_id, 2)
    before = dict(rclient.hgetall(keys.job(job_id)))
    assert process_result(keys.namespace, job_id, first[1], connection=raw, ctx=CTX) == "completed"
    assert dict(rclient.hgetall(keys.job(job_id))) == before
    assert rclient.ttl(keys.job(job_id)) == -1
    assert process_result(keys.namespace, job_id, 2, connection=raw, ctx=CTX) == "processed"


@pytest.mark.parametrize("final", ["failed", "canceled"])
def test_failed_or_canceled_is_recorded_once(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys, final: str
) -> None:
    job_id = submit(rclient, keys)
    pod = FakePod(rclient, keys)
    if final == "failed":
        _, attempt = pod.run_next("failed")
    else:
        attempt = 0  # canceled before any runner took it
        assert functions.run_sync(rclient, functions.cancel(keys, job_id)) is True
    for _ in range(2):
        assert process_result(keys.namespace, job_id, attempt, connection=raw, ctx=CTX) == final
    recorded = events(rclient, keys, job_id, "recorded")
    assert len(recorded) == 1 and recorded[0]["status"] == final
    assert recorded[0]["attempt"] == str(attempt)
    assert rclient.hget(keys.job(job_id), "status") == final
    assert rclient.ttl(keys.job(job_id)) > 0


def test_unknown_job_is_a_no_op(raw: redis.Redis, rclient: redis.Redis, keys: Keys) -> None:
    assert process_result(keys.namespace, str(uuid.uuid4()), 1, connection=raw, ctx=CTX) == ""
    assert not list(rclient.scan_iter(match=f"{keys.namespace}:*"))


def test_retention_comes_from_the_environment(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.from_env({}).job_retention == 7 * 24 * 3600
    assert Settings.from_env({"DISPATCHER_JOB_RETENTION": "1.5"}).job_retention == 1.5
    for bad in ("soon", "-1"):
        with pytest.raises(ConfigError):
            Settings.from_env({"DISPATCHER_JOB_RETENTION": bad})
    monkeypatch.setenv("DISPATCHER_JOB_RETENTION", "0")  # 0 keeps records forever
    job_id, attempt = completed_job(rclient, keys)
    ctx = WriterContext.build(Settings.from_env())
    process_result(keys.namespace, job_id, attempt, connection=raw, ctx=ctx)
    assert rclient.ttl(keys.job(job_id)) == -1


def test_a_writer_reads_its_settings_once() -> None:
    assert context() is context()


def test_outside_rq_a_connection_is_needed(keys: Keys) -> None:
    with pytest.raises(RuntimeError, match="rq worker"):
        process_result(keys.namespace, str(uuid.uuid4()), 1)


# -- real workers ------------------------------------------------------------------------------


def queue_completed_result(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys, job_id: str = ""
) -> tuple[str, int]:
    """A completed job whose outbox entry a pump has put in an rq batch."""
    submit(rclient, keys, job_id)
    job_id, attempt = FakePod(rclient, keys).run_next("completed")
    assert pump_once(raw, keys, PumpConfig()).batches == 1
    return job_id, attempt


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def test_worker_bridge_burst_processes_only_its_namespace(
    rclient: redis.Redis, raw: redis.Redis, redis_url: str, keys: Keys
) -> None:
    other = Keys(f"{keys.namespace}-b")
    shared_id = str(uuid.uuid4())  # the same job id in two namespaces on one Redis
    try:
        mine = queue_completed_result(rclient, raw, keys, shared_id)
        theirs = queue_completed_result(rclient, raw, other, shared_id)
        assert mine == theirs
        run(
            str(BIN / "worker-bridge"),
            "--burst",
            "--redis-url",
            redis_url,
            "--namespace",
            keys.namespace,
            "--log-level",
            "WARNING",
        )
        assert rclient.hget(keys.job(shared_id), "status") == "processed"
        assert rclient.hget(other.job(shared_id), "status") == "completed"
        assert Queue(other.results_queue, connection=raw, ctx=CTX).count == 1
        assert Queue(keys.results_queue, connection=raw, ctx=CTX).count == 0
    finally:
        names = list(raw.scan_iter(match=f"{other.namespace}:*"))
        names += list(raw.scan_iter(match=f"rq:*{other.namespace}*"))
        raw.delete(*names)
        raw.srem("rq:queues", Queue(other.results_queue, connection=raw, ctx=CTX).key)


def test_plain_rq_worker_runs_the_task(
    rclient: redis.Redis, raw: redis.Redis, redis_url: str, keys: Keys
) -> None:
    job_id, _ = queue_completed_result(rclient, raw, keys)
    run(
        str(BIN / "rq"),
        "worker",
        "--burst",
        "--url",
        redis_url,
        "--name",
        f"{keys.namespace}-rq",
        keys.results_queue,
    )
    assert rclient.hget(keys.job(job_id), "status") == "processed"


def test_a_batch_records_each_entry_once(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys
) -> None:
    pod = FakePod(rclient, keys)
    entries = []
    for status in ("completed", "failed", "completed"):
        submit(rclient, keys)
        job_id, attempt = pod.run_next(status)
        entries.append(f"{job_id}:{attempt}")
    unknown = f"{uuid.uuid4()}:1"
    first = process_batch(keys.namespace, [*entries, unknown], connection=raw, ctx=CTX)
    assert first == {"entries": 4, "recorded": 3}
    again = process_batch(keys.namespace, [*entries, unknown], connection=raw, ctx=CTX)
    assert again == {"entries": 4, "recorded": 0}
    statuses = [rclient.hget(keys.job(e.rpartition(":")[0]), "status") for e in entries]
    assert statuses == ["processed", "failed", "processed"]
    assert rclient.hget(keys.stats, "processed") == "2"
    assert not rclient.exists(keys.outbox)
