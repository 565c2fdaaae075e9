"""The pods share the namespace's sweeps (``dispatcher.pod.sweeps``, ``dispatch_v3_tick``): the
schedule as a pure machine, then the function's deep and shallow ticks against Redis."""

from __future__ import annotations

import itertools
import random
from collections import Counter

from dispatcher import functions
from dispatcher.pod.sweeps import SweepSchedule, TickKind, max_sweep_every
from tests.dispatcher.support import SPEC, runner_rec

HOUR_MS = 3_600_000


# -- the schedule ---------------------------------------------------------------------------------


def kinds(schedule: SweepSchedule, ticks: int) -> Counter[TickKind]:
    return Counter(schedule.next() for _ in range(ticks))


def test_a_lone_pod_sweeps_every_other_tick_and_goes_deep_every_fifth_sweep() -> None:
    seen = kinds(SweepSchedule(max_every=5, rng=random.Random(1)), 100)
    assert seen == {TickKind.INBOX: 50, TickKind.SWEEP: 40, TickKind.DEEP: 10}


def test_with_n_pods_a_pod_sweeps_one_tick_in_2n() -> None:
    schedule = SweepSchedule(max_every=10, rng=random.Random(2))
    schedule.counted(3)
    seen = kinds(schedule, 300)
    assert seen[TickKind.INBOX] in range(248, 252)
    assert seen[TickKind.SWEEP] + seen[TickKind.DEEP] in range(49, 53)
    assert seen[TickKind.DEEP] in range(9, 12)


def test_many_pods_still_sweep_often_enough_to_keep_their_presence() -> None:
    schedule = SweepSchedule(max_every=5, rng=random.Random(3))
    schedule.counted(100)
    ticks = [schedule.next() for _ in range(50)]
    sweeps = [i for i, kind in enumerate(ticks) if kind is not TickKind.INBOX]
    assert max(b - a for a, b in itertools.pairwise(sweeps)) == 5


def test_fewer_pods_bring_the_next_sweep_closer() -> None:
    schedule = SweepSchedule(max_every=10, rng=random.Random(4))
    schedule.counted(5)
    while schedule.next() is TickKind.INBOX:
        pass
    schedule.counted(1)  # the others are gone: this pod now sweeps every other tick
    assert [schedule.next() for _ in range(2)] == [TickKind.INBOX, TickKind.SWEEP]


def test_pods_started_together_sweep_at_different_phases() -> None:
    firsts = set()
    for seed in range(20):
        schedule = SweepSchedule(max_every=10, pods=4, rng=random.Random(seed))
        firsts.add(next(i for i in range(10) if schedule.next() is not TickKind.INBOX))
    assert len(firsts) > 1


def test_presence_outlives_three_sweep_gaps() -> None:
    assert max_sweep_every(15.0, 1.0) == 5
    assert max_sweep_every(2.0, 1.0) == 1
    assert max_sweep_every(3.0, 0.1) == 10
    assert max_sweep_every(15.0, 0.0) == 1


# -- the function ---------------------------------------------------------------------------------


def attach(rclient, keys, name: str, pod: str) -> None:
    functions.run_sync(rclient, functions.runner_add(keys, name, "h" * 64, [SPEC]))
    conn = functions.run_sync(rclient, functions.attach(keys, name, pod))["conn"]
    functions.run_sync(rclient, functions.ready(keys, name, conn, ""))


def tick(rclient, keys, pod: str, deep: bool):
    return functions.run_sync(rclient, functions.tick(keys, pod, HOUR_MS, deep=deep))


def test_a_shallow_tick_leaves_dead_pods_and_the_backlog_to_a_deep_one(rclient, keys) -> None:
    assert tick(rclient, keys, "dead", deep=True)["rejoined"] is True  # new in the pod set
    attach(rclient, keys, "r1", "dead")
    rclient.zadd(keys.pods, {"dead": 1})  # its presence lapsed long ago
    shallow = tick(rclient, keys, "live", deep=False)
    assert "backlog" not in shallow and "pods" not in shallow
    assert runner_rec(rclient, keys, "r1")["pod"] == "dead"
    deep = tick(rclient, keys, "live", deep=True)
    assert deep["backlog"] == 0 and deep["pods"] == 1
    assert runner_rec(rclient, keys, "r1")["pod"] == ""
    assert rclient.zscore(keys.pods, "dead") is None
    assert not rclient.exists(keys.pods_reaping, keys.pod_runners("dead"))
    assert rclient.xrange(keys.events)[-1][1]["event"] == "pod_lost"


def test_a_pod_found_dead_learns_it_at_its_next_sweep_and_one_merely_late_does_not(
    rclient, keys
) -> None:
    for pod in ("a", "b"):
        tick(rclient, keys, pod, deep=True)
    attach(rclient, keys, "r1", "a")
    attach(rclient, keys, "r2", "b")
    rclient.zadd(keys.pods, {"a": 1})
    # late, but nobody reaped it yet: renewing loses nothing
    assert tick(rclient, keys, "a", deep=False)["rejoined"] is False
    assert runner_rec(rclient, keys, "r1")["pod"] == "a"
    rclient.zadd(keys.pods, {"b": 1})
    tick(rclient, keys, "a", deep=True)  # a's deep sweep reaps b
    assert runner_rec(rclient, keys, "r2")["pod"] == ""
    assert tick(rclient, keys, "b", deep=False)["rejoined"] is True


def test_a_dead_pod_with_many_runners_is_reaped_over_several_deep_ticks(rclient, keys) -> None:
    tick(rclient, keys, "big", deep=True)
    names = [f"r{i}" for i in range(1_200)]
    pipe = rclient.pipeline(transaction=False)
    for name in names:
        pipe.hset(keys.runner(name), mapping={"pod": "big", "state": "idle", "job": ""})
        pipe.sadd(keys.pod_runners("big"), name)
    pipe.execute()
    rclient.zadd(keys.pods, {"big": 1})
    left = []
    for _ in range(3):
        tick(rclient, keys, "live", deep=True)
        left.append(rclient.scard(keys.pod_runners("big")))
    assert left == [700, 200, 0]
    assert rclient.smembers(keys.pods_reaping) == set()
    assert all(rclient.hget(keys.runner(n), "pod") == "" for n in names)
    # a pod that comes back while deep ticks are still reaping it is reaped no further
    rclient.sadd(keys.pod_runners("big"), "r0")
    rclient.hset(keys.runner("r0"), "pod", "big")
    rclient.sadd(keys.pods_reaping, "big")  # as a deep tick over its budget leaves it
    assert tick(rclient, keys, "big", deep=False)["rejoined"] is True
    assert not rclient.sismember(keys.pods_reaping, "big")
    tick(rclient, keys, "live", deep=True)
    assert runner_rec(rclient, keys, "r0")["pod"] == "big"  # its own sockets close and detach
