"""Pin the Lua library's key names to dispatcher/keys.py: every key the functions write is one
that Keys builds, and the names Keys documents are the ones the functions use."""

import json

import redis

from dispatcher import functions as fn
from dispatcher.keys import Keys


def _all_keys(rclient: redis.Redis, ns: str) -> set[str]:
    return set(rclient.scan_iter(match=f"{ns}:*", count=1000))


def test_every_key_written_by_the_library_is_built_by_keys(rclient, keys: Keys):
    run = lambda call: fn.run_sync(rclient, call)  # noqa: E731
    pod = "pod-a"
    run(fn.tick(keys, pod, 10_000))
    run(fn.runner_add(keys, "r1", "h", ["linux", "mac"]))
    conn = run(fn.attach(keys, "r1", pod))["conn"]
    assert run(fn.ready(keys, "r1", conn, ""))["result"] == "idle"
    queued = run(fn.submit(keys, "", "win", "{}", 0, 60, 1))
    claimed = run(fn.submit(keys, "", "linux", "{}", 0, 60, 1))
    run(fn.cancel(keys, queued))
    expected = {
        keys.job(queued),
        keys.job(claimed),
        keys.seq,
        keys.events,
        keys.stats,
        keys.specs,
        keys.runner("r1"),
        keys.runners,
        keys.pods,
        keys.pod_runners(pod),
        keys.pod_inbox(pod),
        keys.leases,
        keys.outbox,
    }
    assert _all_keys(rclient, keys.namespace) == expected
    # the claimed runner was rung on its pod's inbox, by name
    assert rclient.smembers(keys.pod_inbox(pod)) == {"r1"}
    assert rclient.zscore(keys.leases, claimed) is not None


def test_queue_and_idle_sets_use_keys_names(rclient, keys: Keys):
    run = lambda call: fn.run_sync(rclient, call)  # noqa: E731
    run(fn.tick(keys, "p", 10_000))
    job = run(fn.submit(keys, "", "linux", json.dumps({"x": 1}), 5, 60, 1))
    assert rclient.zrange(keys.pending("linux"), 0, -1, withscores=True)[0][1] == -5
    assert rclient.zrange(keys.pending("linux"), 0, -1)[0].endswith(":" + job)
    run(fn.runner_add(keys, "r2", "h", ["gpu"]))
    conn = run(fn.attach(keys, "r2", "p"))["conn"]
    run(fn.ready(keys, "r2", conn, ""))
    assert rclient.zrange(keys.idle("gpu"), 0, -1) == ["r2"]


def test_namespaces_never_share_a_key(rclient, namespace: str):
    a, b = Keys(namespace), Keys(namespace + "x")
    try:
        fn.run_sync(rclient, fn.submit(a, "", "linux", "{}", 0, 60, 1))
        assert not _all_keys(rclient, b.namespace)
        assert a.results_queue != b.results_queue
        assert a.batch_job_id("results", "t") != b.batch_job_id("results", "t")
        assert a.sink_queue("postgres") != b.sink_queue("postgres")
    finally:
        for name in _all_keys(rclient, b.namespace):
            rclient.delete(name)


def test_the_results_path_writes_only_keys_built_by_keys(rclient, keys: Keys):
    """finish -> outbox; pump reads the rq queue lengths Keys names; record -> sink boxes."""
    run = lambda call: fn.run_sync(rclient, call)  # noqa: E731
    queue = Keys.rq_queue(keys.results_queue)
    rclient.rpush(queue, "a-batch")  # a queue the pump must see as full (max_queued 1)
    run(fn.tick(keys, "p", 10_000))
    run(fn.runner_add(keys, "r1", "h", ["linux"]))
    conn = run(fn.attach(keys, "r1", "p"))["conn"]
    job = run(fn.submit(keys, "", "linux", "{}", 0, 60, 1))
    assert run(fn.ready(keys, "r1", conn, ""))["job"] == job
    run(fn.start(keys, "r1", job, 1))
    fin = fn.finish(
        keys,
        "r1",
        job,
        1,
        "completed",
        exit_code=0,
        results=None,
        stdout=None,
        stderr=None,
        error="",
    )
    assert run(fin)["result"] == "recorded"
    entry = f"{job}:1"
    assert rclient.zrange(keys.outbox, 0, -1) == [entry]
    assert run(fn.pump(keys, 10, 10_000, 60_000, 1)) == {"results": {}, "sinks": {}, "more": True}
    rclient.delete(queue)
    assert run(fn.pump(keys, 10, 10_000, 60_000, 1))["results"] == [entry]
    assert run(fn.record(keys, [entry], 0, ["postgres"])) == [("processed", True)]
    assert rclient.smembers(keys.sinks) == {"postgres"}
    assert rclient.zrange(keys.sinkbox("postgres"), 0, -1) == [entry]
    assert not rclient.exists(keys.outbox)
    rclient.rpush(Keys.rq_queue(keys.sink_queue("postgres")), "a-batch")
    assert run(fn.pump(keys, 10, 10_000, 60_000, 1))["more"] is True  # sink queue full
    rclient.delete(Keys.rq_queue(keys.sink_queue("postgres")))
    assert run(fn.pump(keys, 10, 10_000, 60_000, 1))["sinks"] == {"postgres": [entry]}
