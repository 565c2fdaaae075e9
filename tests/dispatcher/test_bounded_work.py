"""No Redis Function call does unbounded work: stale idle entries and the runners of dead pods are
cleaned a bounded amount per call, the rest by the next calls. Straight through the functions."""

from __future__ import annotations

import json

from dispatcher import functions as fn
from dispatcher.keys import Keys
from tests.dispatcher.support import RClient

SPEC = "linux"


def run(rclient: RClient, call: fn.Call[fn.T]) -> fn.T:
    return fn.run_sync(rclient, call)


def idle_runner(rclient: RClient, keys: Keys, name: str, pod: str) -> None:
    run(rclient, fn.runner_add(keys, name, "h", [SPEC]))
    conn = run(rclient, fn.attach(keys, name, pod))["conn"]
    assert run(rclient, fn.ready(keys, name, conn, ""))["result"] == "idle"


def kill_pod(rclient: RClient, keys: Keys, pod: str) -> None:
    """The pod's presence lapses (as when it dies without leaving)."""
    rclient.zadd(keys.pods, {pod: 1})


def test_a_match_drops_a_bounded_number_of_stale_idle_runners_per_call(
    rclient: RClient, keys: Keys
) -> None:
    run(rclient, fn.tick(keys, "dead", 60_000))
    run(rclient, fn.tick(keys, "live", 60_000))
    pipe = rclient.pipeline(transaction=False)
    for i in range(100):  # idle on a pod that then died: every one is stale
        name = f"stale{i:03d}"
        pipe.fcall("dispatch_v3_runner_add", 0, keys.namespace, name, "h", json.dumps([SPEC]))
    pipe.execute()
    for i in range(100):
        conn = run(rclient, fn.attach(keys, f"stale{i:03d}", "dead"))["conn"]
        run(rclient, fn.ready(keys, f"stale{i:03d}", conn, ""))
    idle_runner(rclient, keys, "fresh", "live")  # idle last: served after the stale ones
    kill_pod(rclient, keys, "dead")
    payload = json.dumps({"command": ["true"]})
    first = run(rclient, fn.submit(keys, "", SPEC, payload, 0, 60, 1))
    # 65 stale entries dropped, then the call gives up: the job waits in the queue
    assert rclient.hget(keys.job(first), "status") == "pending"
    assert rclient.zcard(keys.idle(SPEC)) == 101 - 65
    second = run(rclient, fn.submit(keys, "", SPEC, payload, 0, 60, 1))
    assert rclient.hget(keys.job(second), "runner") == "fresh"
    assert rclient.zcard(keys.idle(SPEC)) == 0


def test_the_runners_of_a_dead_pod_are_detached_500_per_tick(rclient: RClient, keys: Keys) -> None:
    run(rclient, fn.tick(keys, "big", 60_000))
    pipe = rclient.pipeline(transaction=False)
    for i in range(1200):
        pipe.fcall("dispatch_v3_runner_add", 0, keys.namespace, f"r{i}", "h", json.dumps([SPEC]))
        pipe.fcall("dispatch_v3_attach", 0, keys.namespace, f"r{i}", "big")
    pipe.execute()
    kill_pod(rclient, keys, "big")
    remaining = []
    for _ in range(3):
        run(rclient, fn.tick(keys, "other", 60_000))
        remaining.append(rclient.scard(keys.pod_runners("big")))
    assert remaining == [700, 200, 0]
    assert rclient.zscore(keys.pods, "big") is None  # left the pod set once empty
    states = {rclient.hget(keys.runner(f"r{i}"), "state") for i in range(1200)}
    assert states == {"offline"}
    lost = [f for _, f in rclient.xrange(keys.events) if f["event"] == "pod_lost"]
    assert [f["pod"] for f in lost] == ["big"]
