"""Pause and resume a runner from the server: a paused runner stays connected, finishes its job,
and is offered nothing until resumed. Through the functions, then with real pods and runners."""

from __future__ import annotations

import dataclasses
import time

import pytest

from dispatcher import functions as fn
from dispatcher.client import Client
from dispatcher.errors import InvalidInput, NotFound
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.dispatcher.groupkit import (
    RClient,
    connect,
    finish,
    live_pod,
    ready,
    run,
    runner_of,
    status,
    submit,
)
from tests.dispatcher.support import ready_and_waiting, start_job
from tests.podkit import add_runner
from tests.podkit import connect as ws_connect


def pause(rclient: RClient, keys: Keys, name: str, on: bool = True) -> dict[str, object]:
    return run(rclient, fn.runner_pause(keys, name, on))


def test_a_paused_waiting_runner_leaves_the_idle_sets_in_the_same_call(
    rclient: RClient, keys: Keys
) -> None:
    live_pod(rclient, keys)
    conn = connect(rclient, keys, "r0", ["linux", "mac"])
    assert ready(rclient, keys, "r0", conn)["result"] == "idle"
    assert pause(rclient, keys, "r0") == {"paused": True, "changed": True, "job": None}
    assert rclient.zcard(keys.idle("linux")) == rclient.zcard(keys.idle("mac")) == 0
    job = submit(rclient, keys)
    assert status(rclient, keys, job) == "pending"


def test_resume_gives_a_waiting_runner_the_best_pending_job_at_once(
    rclient: RClient, keys: Keys
) -> None:
    live_pod(rclient, keys)
    conn = connect(rclient, keys, "r0")
    ready(rclient, keys, "r0", conn)
    pause(rclient, keys, "r0")
    low, high = submit(rclient, keys, priority=1), submit(rclient, keys, priority=5)
    rclient.delete(keys.pod_inbox("pod-a"))
    reply = pause(rclient, keys, "r0", on=False)
    assert reply == {"paused": False, "changed": True, "job": high}
    assert runner_of(rclient, keys, high) == "r0" and status(rclient, keys, low) == "pending"
    assert rclient.smembers(keys.pod_inbox("pod-a")) == {"r0"}  # its pod was rung


def test_a_paused_runners_ready_gets_nothing_until_resumed(rclient: RClient, keys: Keys) -> None:
    live_pod(rclient, keys)
    conn = connect(rclient, keys, "r0")
    pause(rclient, keys, "r0")
    job = submit(rclient, keys)
    assert ready(rclient, keys, "r0", conn) == {"result": "idle"}  # the poll stays open...
    assert rclient.zcard(keys.idle("linux")) == 0  # ...outside the idle sets
    assert run(rclient, fn.ready(keys, "r0", conn, "", "try")) == {"result": "none"}
    assert pause(rclient, keys, "r0", on=False)["job"] == job


def test_resume_of_a_runner_not_waiting_puts_it_nowhere(rclient: RClient, keys: Keys) -> None:
    live_pod(rclient, keys)
    connect(rclient, keys, "r0")  # connected, no `ready` yet
    pause(rclient, keys, "r0")
    submit(rclient, keys)
    assert pause(rclient, keys, "r0", on=False)["job"] is None
    assert rclient.zcard(keys.idle("linux")) == 0


def test_a_paused_runner_finishes_its_job_then_gets_nothing(rclient: RClient, keys: Keys) -> None:
    live_pod(rclient, keys)
    conn = connect(rclient, keys, "r0")
    first = submit(rclient, keys)
    assert ready(rclient, keys, "r0", conn)["job"] == first
    pause(rclient, keys, "r0")
    assert status(rclient, keys, first) == "claimed"  # nothing canceled
    finish(rclient, keys, "r0", first)
    second = submit(rclient, keys)
    assert ready(rclient, keys, "r0", conn)["result"] == "idle"
    assert status(rclient, keys, second) == "pending"


def test_pausing_twice_changes_nothing_the_second_time(rclient: RClient, keys: Keys) -> None:
    live_pod(rclient, keys)
    connect(rclient, keys, "r0")
    assert pause(rclient, keys, "r0")["changed"] is True
    assert pause(rclient, keys, "r0")["changed"] is False
    events = [f["event"] for _, f in rclient.xrange(keys.events)]
    assert events.count("runner_paused") == 1


def test_unknown_runner_and_bad_flag_are_refused(rclient: RClient, keys: Keys) -> None:
    with pytest.raises(NotFound, match="no such runner"):
        pause(rclient, keys, "ghost")
    live_pod(rclient, keys)
    connect(rclient, keys, "r0")
    before = rclient.hgetall(keys.runner("r0"))
    with pytest.raises(InvalidInput, match="invalid paused"):
        run(rclient, fn.Call("dispatch_v3_runner_pause", (), (keys.namespace, "r0", "yes"), str))
    assert rclient.hgetall(keys.runner("r0")) == before


def test_runner_list_shows_paused(settings: Settings, rclient: RClient, keys: Keys) -> None:
    live_pod(rclient, keys)
    connect(rclient, keys, "r0")
    connect(rclient, keys, "r1")
    with Client(settings) as client:
        client.pause_runner("r1")
        assert [(r["name"], r["paused"]) for r in client.runners()] == [
            ("r0", False),
            ("r1", True),
        ]
        client.resume_runner("r1")
        assert not any(r["paused"] for r in client.runners())


# -- with real pods: whichever pod holds the runner, at once -----------------------------------

BOUND = 10.0  # generous on a busy machine; the 30 s tick proves the doorbell did the work


async def test_pause_and_resume_reach_a_runner_waiting_on_another_pod(
    launch, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    slow = dataclasses.replace(settings, reconcile_interval=30, pod_ttl=90)
    _near, far = await launch(slow), await launch(slow)
    runner = await ws_connect(far, "far", add_runner(settings, "far", ["linux"]))
    await ready_and_waiting(runner, rclient, keys, poll_timeout=30)
    with Client(settings) as client:
        client.pause_runner("far")  # the producer's client talks to Redis, not to a pod
        job = client.submit("linux", {"command": ["true"]})
        await runner.silent(0.5)
        assert client.get(job)["status"] == "pending"
        started = time.monotonic()
        assert client.resume_runner("far")["job"] == job
    offered = await runner.expect("job", timeout=BOUND)
    assert offered["job"] == job and time.monotonic() - started < BOUND
    await start_job(runner, offered)


async def test_a_lingering_runner_is_paused_and_resumed_too(
    launch, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    pod = await launch(dataclasses.replace(settings, linger=30, reconcile_interval=30, pod_ttl=90))
    runner = await ws_connect(pod, "r0", add_runner(settings, "r0", ["linux"]))
    await ready_and_waiting(runner, rclient, keys, poll_timeout=1)
    await runner.expect("no_job", timeout=BOUND)  # lingering: still in the idle sets
    assert rclient.zscore(keys.idle("linux"), "r0") is not None
    with Client(settings) as client:
        client.pause_runner("r0")
        assert rclient.zscore(keys.idle("linux"), "r0") is None
        job = client.submit("linux", {"command": ["true"]})
        assert client.get(job)["status"] == "pending"
        assert client.resume_runner("r0")["job"] == job
    await runner.send("ready", poll_timeout=30)  # the job held for it is the answer
    assert (await runner.expect("job", timeout=BOUND))["job"] == job
