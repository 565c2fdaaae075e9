"""Exactly-once delivery under load: many runners over two pods, jobs submitted in a burst."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import redis.asyncio

from tests.dispatcher.support import SPEC, eventually, idle_runners, submit_async
from tests.podkit import RawRunner, add_runner, connect

JOBS = 500
RUNNERS = 50
BURST_LIMIT = 60  # s; a few seconds on an idle machine, a catastrophe if it ever took a minute


async def work(
    runner: RawRunner,
    done: asyncio.Event,
    log: list[tuple[str, str, int]],
    problems: list[str],
    finished: list[str],
    total: int,
) -> None:
    """ready -> job -> running -> completed, until every job is finished."""
    while not done.is_set():
        await runner.send("ready", poll_timeout=1)
        message = await runner.recv(5)
        if message["event"] == "no_job":
            continue
        if message["event"] != "job":
            problems.append(f"{runner.name}: {message} instead of job/no_job")
            continue
        job_id, attempt = message["job"], message["attempt"]
        log.append((runner.name, job_id, attempt))
        for event, fields in (("running", {}), ("completed", {"exit_code": 0, "results": None})):
            await runner.send(event, job=job_id, attempt=attempt, **fields)
            reply = await runner.recv(5)
            if reply != {"event": "ack", "job": job_id, "of": event}:
                problems.append(f"{runner.name}: {reply} while {job_id} was in flight")
        finished.append(job_id)
        if len(finished) >= total:
            done.set()
    await runner.close()


async def test_500_jobs_burst_to_50_runners_over_2_pods_are_delivered_exactly_once(
    pods, settings, rclient, keys, redis_url
):
    a, b = pods
    runners = []
    for i in range(RUNNERS):
        name = f"r{i:02d}"
        token = add_runner(settings, name, [SPEC])
        runners.append(await connect(a if i % 2 else b, name, token))
    done = asyncio.Event()
    log: list[tuple[str, str, int]] = []
    problems: list[str] = []
    finished: list[str] = []
    workers = [asyncio.create_task(work(r, done, log, problems, finished, JOBS)) for r in runners]
    await eventually(  # every runner is waiting in a long poll
        lambda: len(idle_runners(rclient, keys)) == RUNNERS, 10, what="all runners waiting"
    )

    pool = redis.asyncio.BlockingConnectionPool.from_url(redis_url, max_connections=32)
    producer = redis.asyncio.Redis(connection_pool=pool)
    started = time.monotonic()
    try:
        submitted = await asyncio.gather(
            *(submit_async(producer, keys, payload={"n": n}) for n in range(JOBS))
        )
        await asyncio.wait_for(done.wait(), BURST_LIMIT)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*workers), 10)
    finally:
        await producer.aclose()
        await pool.aclose()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    assert problems == []
    delivered = Counter(job_id for _, job_id, _ in log)
    assert len(set(submitted)) == JOBS
    assert set(delivered) == set(submitted)
    assert [job for job, n in delivered.items() if n != 1] == []
    assert {attempt for _, _, attempt in log} == {1}
    by_job = {job_id: name for name, job_id, _ in log}
    pipe = rclient.pipeline(transaction=False)
    for job_id in submitted:
        pipe.hmget(keys.job(job_id), "status", "attempt", "runner")
    records: list[Any] = pipe.execute()
    assert Counter(rec[0] for rec in records) == {"completed": JOBS}
    assert all(rec[1] == "1" for rec in records)
    assert all(rec[2] == by_job[job_id] for job_id, rec in zip(submitted, records, strict=True))
    # both pods delivered: odd-numbered runners sit on pod a, even-numbered ones on pod b
    per_pod = Counter(int(name[1:]) % 2 for name, _, _ in log)
    assert per_pod[0] > 0 and per_pod[1] > 0, per_pod
    assert elapsed < BURST_LIMIT


async def test_jobs_submitted_as_long_polls_end_are_each_delivered_once(
    pods, settings, rclient, keys, redis_url
):
    """Race at the end of a poll: each `ready` gets exactly one answer, no job is lost."""
    a, b = pods
    runners = [
        await connect(a if i % 2 else b, f"r{i}", add_runner(settings, f"r{i}", [SPEC]))
        for i in range(20)
    ]
    for runner in runners:
        await runner.send("ready", poll_timeout=1)
    await asyncio.sleep(0.9)
    producer = redis.asyncio.Redis.from_url(redis_url)
    try:
        submitted = []
        for _ in range(20):  # spread over the moment the polls end
            submitted.append(await submit_async(producer, keys))
            await asyncio.sleep(0.01)
    finally:
        await producer.aclose()

    async def collect(runner: RawRunner) -> list[dict[str, Any]]:
        got = []
        while True:
            message = await runner.recv(3)
            got.append(message)
            if message["event"] == "job":
                await runner.send(
                    "completed",
                    job=message["job"],
                    attempt=message["attempt"],
                    exit_code=0,
                    results=None,
                )
                assert await runner.recv(3) == {
                    "event": "ack",
                    "job": message["job"],
                    "of": "completed",
                }
                return got
            assert message["event"] == "no_job", message
            await runner.send("ready", poll_timeout=1)

    answers = await asyncio.wait_for(asyncio.gather(*(collect(r) for r in runners)), 15)
    jobs = Counter(m["job"] for got in answers for m in got if m["event"] == "job")
    assert sorted(jobs) == sorted(submitted)
    assert set(jobs.values()) == {1}
    await asyncio.gather(*(r.silent(0.2) for r in runners))  # nothing unsolicited afterwards
    assert {rclient.hget(keys.job(j), "status") for j in submitted} == {"completed"}
