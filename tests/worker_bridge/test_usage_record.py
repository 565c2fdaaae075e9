"""Usage metering in the writers' ``record`` call: once per job, by spec, group and runner, on the
UTC day the job finished, against a real Redis and the real writer task (and the real
``worker-bridge`` process)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from dispatcher import functions
from dispatcher.errors import ConfigError
from dispatcher.keys import Keys
from dispatcher.results import PumpConfig, pump_once
from dispatcher.settings import Settings
from dispatcher.usage_days import utc_today
from tests.jobflow import SPEC, FakePod
from worker_bridge.tasks import WriterContext, process_batch, process_result

BIN = Path(sys.executable).parent
CTX = WriterContext(Settings())  # default retentions, no sinks
KEPT = WriterContext(Settings(usage_retention_days=0))


def submit(rclient: redis.Redis, keys: Keys, spec: str = SPEC, max_attempts: int = 1) -> str:
    payload = json.dumps({"command": ["true"]})
    return functions.run_sync(
        rclient, functions.submit(keys, "", spec, payload, 0, 60, max_attempts)
    )


def day_of(ms: str | bytes) -> str:
    return dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC).date().isoformat()


def usage(rclient: redis.Redis, keys: Keys, day: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in rclient.hgetall(keys.usage(day)).items()}


def running_ms(rclient: redis.Redis, keys: Keys, job_id: str) -> tuple[int, str]:
    started, finished = rclient.hmget(keys.job(job_id), "started", "finished")
    assert finished
    return (int(finished) - int(started) if started else 0), day_of(finished)


def test_a_completed_job_is_metered_once_however_often_it_is_recorded(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys
) -> None:
    submit(rclient, keys)
    pod = FakePod(rclient, keys, runner="r1")
    job_id, attempt = pod.take()
    rclient.hset(keys.job(job_id), "group", "org-42")  # the field concurrency groups write
    pod.finish(job_id, attempt)
    ms, day = running_ms(rclient, keys, job_id)
    entry = f"{job_id}:{attempt}"
    for _ in range(3):  # a re-pumped batch, rq retrying the task
        process_batch(keys.namespace, [entry, entry], connection=raw, ctx=CTX)
    assert usage(rclient, keys, day) == {
        f"ms:spec:{SPEC}": ms,
        f"jobs:spec:{SPEC}": 1,
        "ms:group:org-42": ms,
        "jobs:group:org-42": 1,
        "ms:runner:r1": ms,
        "jobs:runner:r1": 1,
    }
    # a processed job is final for good: nothing needs remembering of what it added
    assert rclient.hget(keys.job(job_id), "metered_ms") is None


def test_two_writers_racing_on_one_batch_meter_each_job_once(
    rclient: redis.Redis, redis_url: str, keys: Keys
) -> None:
    pod = FakePod(rclient, keys)
    entries: list[str] = []
    for _ in range(20):
        submit(rclient, keys)
        job_id, attempt = pod.run_next("completed" if len(entries) % 2 else "failed")
        entries.append(f"{job_id}:{attempt}")
    start = threading.Barrier(4)
    changed: list[int] = []

    def writer() -> None:
        conn = redis.Redis.from_url(redis_url)
        try:
            start.wait(timeout=30)
            changed.append(
                process_batch(keys.namespace, entries, connection=conn, ctx=CTX)["recorded"]
            )
        finally:
            conn.close()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(changed) == 20  # each entry changed by exactly one of the writers
    expected = sum(running_ms(rclient, keys, e.rpartition(":")[0])[0] for e in entries)
    days = {running_ms(rclient, keys, e.rpartition(":")[0])[1] for e in entries}
    totals = [usage(rclient, keys, day) for day in days]
    assert sum(u.get(f"jobs:spec:{SPEC}", 0) for u in totals) == 20
    assert sum(u.get(f"ms:spec:{SPEC}", 0) for u in totals) == expected
    assert sum(u.get("jobs:runner:r1", 0) for u in totals) == 20
    assert sum(u.get("jobs:group:", 0) for u in totals) == 20  # no group: the name ''


def test_a_job_canceled_before_it_started_counts_as_a_job_of_zero_seconds(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys
) -> None:
    job_id = submit(rclient, keys, spec="nobody-serves-this")
    assert functions.run_sync(rclient, functions.cancel(keys, job_id)) is True
    _, day = running_ms(rclient, keys, job_id)
    for _ in range(2):
        assert process_result(keys.namespace, job_id, 0, connection=raw, ctx=CTX) == "canceled"
    assert usage(rclient, keys, day) == {
        "ms:spec:nobody-serves-this": 0,
        "jobs:spec:nobody-serves-this": 1,
        "ms:group:": 0,
        "jobs:group:": 1,
        "ms:runner:": 0,
        "jobs:runner:": 1,
    }


def test_a_claimed_job_canceled_before_running_meters_zero_seconds_for_its_runner(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys
) -> None:
    submit(rclient, keys)
    offer = FakePod(rclient, keys, runner="r7").ready()  # claimed, never started
    job_id = str(offer["job"])
    assert functions.run_sync(rclient, functions.cancel(keys, job_id)) is True
    _, day = running_ms(rclient, keys, job_id)
    process_result(keys.namespace, job_id, int(offer["attempt"]), connection=raw, ctx=CTX)
    assert usage(rclient, keys, day)["ms:runner:r7"] == 0
    assert usage(rclient, keys, day)["jobs:runner:r7"] == 1


def test_a_completion_replacing_a_lease_failure_adds_time_but_no_second_job(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys
) -> None:
    rclient.hset(keys.config, "lease_timeout", "0.05")  # the lease runs out at once
    submit(rclient, keys)
    pod = FakePod(rclient, keys)
    job_id, attempt = pod.take()
    deadline = time.monotonic() + 30
    while rclient.hget(keys.job(job_id), "status") != "failed":
        assert time.monotonic() < deadline, "the lease never expired"
        functions.run_sync(rclient, functions.tick(keys, "fakepod", 60_000))
    assert process_result(keys.namespace, job_id, attempt, connection=raw, ctx=CTX) == "failed"
    first_ms, day = running_ms(rclient, keys, job_id)
    assert usage(rclient, keys, day)[f"jobs:spec:{SPEC}"] == 1
    assert rclient.hget(keys.job(job_id), "metered_ms") == str(first_ms)  # it may be replaced
    # the runner's `completed` for the same attempt arrives late and wins (PROTOCOL override)
    assert pod.finish(job_id, attempt)["override"] is True
    final_ms, final_day = running_ms(rclient, keys, job_id)
    assert final_ms >= first_ms
    for _ in range(2):
        assert (
            process_result(keys.namespace, job_id, attempt, connection=raw, ctx=CTX) == "processed"
        )
    days = {day, final_day}
    assert sum(usage(rclient, keys, d).get(f"jobs:spec:{SPEC}", 0) for d in days) == 1
    assert sum(usage(rclient, keys, d).get(f"ms:spec:{SPEC}", 0) for d in days) == final_ms


def test_a_job_of_a_concurrency_group_is_metered_under_its_group(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys
) -> None:
    call = functions.submit(keys, "", SPEC, "{}", 0, 60, 1, group="org-42")
    job_id = functions.run_sync(rclient, call)
    taken, attempt = FakePod(rclient, keys, runner="r3").run_next()
    assert taken == job_id
    process_result(keys.namespace, job_id, attempt, connection=raw, ctx=CTX)
    ms, day = running_ms(rclient, keys, job_id)
    assert usage(rclient, keys, day)["ms:group:org-42"] == ms
    assert usage(rclient, keys, day)["jobs:group:org-42"] == 1


def test_a_retried_job_is_metered_once_for_its_final_attempt(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys
) -> None:
    call = functions.submit(keys, "", SPEC, "{}", 0, 60, 1, retries=1)
    job_id = functions.run_sync(rclient, call)
    pod = FakePod(rclient, keys)
    first = pod.take()
    pod.finish(*first, status="failed", error="boom")  # the runner's failure: queued again
    assert rclient.zcard(keys.outbox) == 0  # a retried attempt is no result
    second = pod.take()
    assert second == (job_id, first[1] + 1)
    pod.finish(*second)
    process_result(keys.namespace, job_id, second[1], connection=raw, ctx=CTX)
    ms, day = running_ms(rclient, keys, job_id)  # the final attempt's started and finished
    assert usage(rclient, keys, day)[f"jobs:spec:{SPEC}"] == 1
    assert usage(rclient, keys, day)[f"ms:spec:{SPEC}"] == ms


# The day is the UTC date of `finished`, computed in Lua (no os.date there): pinned against
# Python's calendar on the edges that break date arithmetic.
EDGES = [
    "1999-12-31T23:59:59.999",
    "2000-01-01T00:00:00.000",
    "2000-02-29T12:00:00.000",
    "2000-03-01T00:00:00.000",
    "2024-02-29T23:59:59.999",
    "2026-12-31T23:59:59.999",
    "2100-02-28T23:59:59.999",
    "2100-03-01T00:00:00.000",
    "2400-02-29T00:00:00.001",
]


@pytest.mark.parametrize("finished", EDGES)
def test_usage_lands_on_the_utc_day_the_job_finished(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys, finished: str
) -> None:
    end = dt.datetime.fromisoformat(finished).replace(tzinfo=dt.UTC)
    end_ms = int(end.timestamp() * 1000)
    job_id = str(uuid.uuid4())
    rclient.hset(
        keys.job(job_id),
        mapping={
            "id": job_id,
            "spec": SPEC,
            "status": "completed",
            "attempt": "1",
            "runner": "r1",
            "started": str(end_ms - 90_500),
            "finished": str(end_ms),
        },
    )
    assert process_result(keys.namespace, job_id, 1, connection=raw, ctx=KEPT) == "processed"
    assert usage(rclient, keys, end.date().isoformat())[f"ms:spec:{SPEC}"] == 90_500
    assert rclient.ttl(keys.usage(end.date().isoformat())) == -1  # retention 0: kept


def test_each_day_lives_its_retention_after_it_ends(
    rclient: redis.Redis, raw: redis.Redis, keys: Keys
) -> None:
    ctx = WriterContext(Settings(usage_retention_days=2))
    submit(rclient, keys)
    job_id, attempt = FakePod(rclient, keys).run_next()
    process_result(keys.namespace, job_id, attempt, connection=raw, ctx=ctx)
    _, day = running_ms(rclient, keys, job_id)
    day_end = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC) + dt.timedelta(days=1)
    expires_at = rclient.expiretime(keys.usage(day))
    assert expires_at == int((day_end + dt.timedelta(days=2)).timestamp())


def test_the_call_declares_the_days_around_the_writers_clock(keys: Keys) -> None:
    today = utc_today()
    call = functions.record(keys, ["x:1"], 60, [])
    for shift in (-1, 0, 1):
        assert keys.usage((today + dt.timedelta(days=shift)).isoformat()) in call.keys
    assert call.args[3] == 400  # DISPATCHER_USAGE_RETENTION_DAYS' default


def test_usage_retention_comes_from_the_environment() -> None:
    assert Settings.from_env({}).usage_retention_days == 400
    assert Settings.from_env({"DISPATCHER_USAGE_RETENTION_DAYS": "30"}).usage_retention_days == 30
    for bad in ("a year", "-1", "1.5"):
        with pytest.raises(ConfigError, match=r"USAGE_RETENTION_DAYS|usage_retention_days"):
            Settings.from_env({"DISPATCHER_USAGE_RETENTION_DAYS": bad})


@pytest.mark.parametrize("bad", ["-1", "1.5", "forever", ""])
def test_a_bad_usage_retention_is_refused_and_changes_nothing(
    rclient: redis.Redis, keys: Keys, bad: str
) -> None:
    submit(rclient, keys)
    job_id, attempt = FakePod(rclient, keys).run_next()
    call = functions.record(keys, [f"{job_id}:{attempt}"], 60, [])
    args = (call.args[0], call.args[1], call.args[2], bad, *call.args[4:])
    with pytest.raises(redis.ResponseError, match="invalid usage retention"):
        rclient.fcall(call.name, len(call.keys), *call.keys, *args)
    assert rclient.hget(keys.job(job_id), "status") == "completed"
    assert not list(rclient.scan_iter(match=f"{keys.namespace}:usage:*"))


def test_the_worker_bridge_process_meters_what_it_records(
    rclient: redis.Redis, raw: redis.Redis, redis_url: str, keys: Keys
) -> None:
    submit(rclient, keys)
    job_id, _ = FakePod(rclient, keys).run_next()
    assert pump_once(raw, keys, PumpConfig()).batches == 1
    subprocess.run(
        [
            str(BIN / "worker-bridge"),
            "--burst",
            "--redis-url",
            redis_url,
            "--namespace",
            keys.namespace,
            "--log-level",
            "WARNING",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    ms, day = running_ms(rclient, keys, job_id)
    assert rclient.hget(keys.job(job_id), "status") == "processed"
    assert usage(rclient, keys, day)[f"jobs:spec:{SPEC}"] == 1
    assert usage(rclient, keys, day)[f"ms:spec:{SPEC}"] == ms
