"""Never more than `limit` jobs of a group claimed or running, under any race: many threads, each
with its own Redis connection (as many pods would be), call `ready`, `finish` and `submit` at
once on a real Redis; the event stream (written in the same atomic calls) is replayed to find the
most jobs of each group that were ever in flight together."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import redis

from dispatcher import functions as fn
from dispatcher.keys import Keys
from tests.dispatcher.groupkit import PAYLOAD, RClient, live_pod, run, set_limit

LIMITS = {"a": 1, "b": 2, "c": 3}
RUNNERS = 12  # threads, each one runner on its own connection
JOBS_PER_GROUP = 40
DEADLINE = 120.0  # generous: the whole run takes a few seconds on an idle machine

# what ends an attempt in flight in this test (no cancel, no writer): each follows a `claimed`
ENDS = {"completed", "failed", "start_expired", "lease_expired", "released", "retry"}


def runner_loop(url: str, keys: Keys, name: str, stop: threading.Event) -> None:
    client: Any = redis.Redis.from_url(url, decode_responses=True)
    rng = random.Random(name)
    run(client, fn.runner_add(keys, name, "h" * 64, ["linux"]))
    conn = run(client, fn.attach(keys, name, "pod-a"))["conn"]
    while not stop.is_set():
        reply = run(client, fn.ready(keys, name, conn, ""))
        if reply["result"] == "idle":
            # waiting: a slot freed elsewhere may hand this runner a job meanwhile; the poll
            # ends (sometimes handing such a job back, as a pod that cannot send it does)
            time.sleep(0.002)
            reply = run(client, fn.poll_end(keys, name, conn, release=rng.random() < 0.2))
        if reply["result"] != "job":
            continue
        job = reply["job"]
        attempt = int(client.hget(keys.job(job), "attempt"))
        run(client, fn.start(keys, name, job, attempt))
        status = "completed" if rng.random() < 0.8 else "failed"
        call = fn.finish(
            keys,
            name,
            job,
            attempt,
            status,
            exit_code=0,
            results=None,
            stdout=None,
            stderr=None,
            error="",
        )
        run(client, call)
    client.close()


def submitter(url: str, keys: Keys, group: str) -> None:
    client: Any = redis.Redis.from_url(url, decode_responses=True)
    rng = random.Random(group)
    for _ in range(JOBS_PER_GROUP):
        priority = rng.randint(0, 3)
        run(client, fn.submit(keys, "", "linux", PAYLOAD, priority, 3600, 1, group=group))
    client.close()


def max_in_flight(rclient: RClient, keys: Keys) -> dict[str, int]:
    group_of: dict[str, str] = {}
    current: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    for _, f in rclient.xrange(keys.events):
        job = f.get("job", "")
        if f["event"] == "submitted":
            group_of[job] = rclient.hget(keys.job(job), "group") or ""
        elif f["event"] == "claimed":
            current[group_of[job]] += 1
            peak[group_of[job]] = max(peak[group_of[job]], current[group_of[job]])
        elif f["event"] in ENDS and job in group_of:
            current[group_of[job]] -= 1
    return dict(peak)


def test_no_group_ever_exceeds_its_limit_under_racing_readys_and_submits(
    redis_url: str, rclient: RClient, keys: Keys
) -> None:
    live_pod(rclient, keys)
    for group, limit in LIMITS.items():
        set_limit(rclient, keys, group, limit)
    stop = threading.Event()
    runners = [
        threading.Thread(target=runner_loop, args=(redis_url, keys, f"r{i}", stop))
        for i in range(RUNNERS)
    ]
    producers = [
        threading.Thread(target=submitter, args=(redis_url, keys, g)) for g in (*LIMITS, "free")
    ]
    for t in (*runners, *producers):
        t.start()
    for t in producers:
        t.join(DEADLINE)
    total = JOBS_PER_GROUP * (len(LIMITS) + 1)
    deadline = time.monotonic() + DEADLINE
    final = {"completed", "failed"}
    while time.monotonic() < deadline:
        statuses = Counter(
            rclient.hget(keys.job(f["job"]), "status") for f in submitted(rclient, keys)
        )
        if sum(statuses[s] for s in final) == total:
            break
        time.sleep(0.05)  # (polls a condition; the bound is the deadline)
    stop.set()
    for t in runners:
        t.join(DEADLINE)
    assert sum(statuses[s] for s in final) == total, statuses
    peaks = max_in_flight(rclient, keys)
    for group, limit in LIMITS.items():
        assert peaks[group] <= limit, (group, peaks)
    assert peaks["a"] == 1 and peaks["free"] > 3  # the race did happen
    for group in (*LIMITS, "free"):
        assert rclient.scard(keys.group_inflight(group)) == 0
        assert rclient.zcard(keys.group_pending(group, "linux")) == 0
    assert rclient.zcard(keys.pending("linux")) == 0


def submitted(rclient: RClient, keys: Keys) -> list[dict[str, str]]:
    return [f for _, f in rclient.xrange(keys.events) if f["event"] == "submitted"]
