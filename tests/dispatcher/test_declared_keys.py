"""Every function call declares keys built by ``Keys``, all in one hash slot when the namespace is
hash-tagged, so a cluster client can route it (the cluster suite runs them on a real cluster)."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest
from redis.crc import key_slot

from dispatcher import functions as fn
from dispatcher import logs
from dispatcher.keys import LIBRARY_NAME, Keys

JOB = "0b7f4a62-6f0e-4c59-9a8e-3c1d2e4f5a6b"
TAGGED = Keys("{fleet-a}")


def calls(keys: Keys) -> dict[str, fn.Call[Any]]:
    """One call of every function, with arguments that name every optional key."""
    return {
        "submit": fn.submit(keys, JOB, "linux", "{}", 0, 60, 1, group="org-42"),
        "cancel": fn.cancel(keys, JOB),
        "runner_add": fn.runner_add(keys, "r1", "h" * 64, ["linux", "mac"]),
        "runner_revoke": fn.runner_revoke(keys, "r1"),
        "runner_rotate": fn.runner_rotate(keys, "r1", "h" * 64),
        "pump": fn.pump(keys, 10, 1000, 1000, 8),
        "record": fn.record(keys, [f"{JOB}:1", f"{JOB}:2"], 60, ["postgres", "webhook"]),
        "attach": fn.attach(keys, "r1", "pod-a"),
        "detach": fn.detach(keys, "r1", "pod-a", 3),
        "ready": fn.ready(keys, "r1", 3, ""),
        "poll_end": fn.poll_end(keys, "r1", 3),
        "observe": fn.observe(keys, "pod-a", "r1", JOB),
        "start": fn.start(keys, "r1", JOB, 1),
        "heartbeat": fn.heartbeat(keys, "r1", JOB, 1),
        "finish": fn.finish(
            keys,
            "r1",
            JOB,
            1,
            "completed",
            exit_code=0,
            results=None,
            stdout=None,
            stderr=None,
            error="",
        ),
        "tick": fn.tick(keys, "pod-a", 3000),
        "pod_stop": fn.pod_stop(keys, "pod-a"),
        "log_append": logs.append(keys, "r1", JOB, 1, 0, "stdout", "x", 1024),
        "log_read": logs.read(keys, JOB),
        "group_set": fn.group_set(keys, "org-42", 2),
        "runner_pause": fn.runner_pause(keys, "r1", True),
    }


def test_every_registered_function_is_covered() -> None:
    source = resources.files("dispatcher").joinpath("lua/dispatch.lua").read_text()
    registered = set(re.findall(rf"register_function\('{LIBRARY_NAME}_(\w+)'", source))
    assert registered == set(calls(TAGGED))
    for name, call in calls(TAGGED).items():
        assert call.name == f"{LIBRARY_NAME}_{name}"


@pytest.mark.parametrize("name", sorted(calls(TAGGED)))
def test_declared_keys_are_the_namespaces_and_share_one_slot(name: str) -> None:
    call = calls(TAGGED)[name]
    assert call.keys, "a cluster client routes a call by its keys"
    assert len(set(call.keys)) == len(call.keys)
    for key in call.keys:
        assert key.startswith(TAGGED.namespace + ":") or key == Keys.rq_queue(
            TAGGED.results_queue
        ), key
    assert {key_slot(k.encode()) for k in call.keys} == {key_slot(b"{fleet-a}")}
    # ARGV is unchanged: the namespace first, so numkeys 0 keeps working on standalone Redis
    assert call.args[0] == TAGGED.namespace
    assert call.keys_and_args == (*call.keys, *call.args)


def test_every_channel_and_runtime_key_of_a_tagged_namespace_is_in_its_slot() -> None:
    slot = key_slot(b"{fleet-a}")
    names = [
        TAGGED.pending("gpu"),
        TAGGED.idle("gpu"),
        TAGGED.job(JOB),
        TAGGED.runner("r9"),
        TAGGED.pod_channel("p"),
        TAGGED.done_channel,
        TAGGED.sinkbox("webhook"),
        TAGGED.group_pending("org-42", "gpu"),
        Keys.rq_queue(TAGGED.results_queue),
        Keys.rq_queue(TAGGED.sink_queue("postgres")),
    ]
    assert {key_slot(n.encode()) for n in names} == {slot}


def test_the_pump_declares_the_rq_queue_only_when_it_reads_it() -> None:
    measured = fn.pump(TAGGED, 10, 1000, 1000, 8, queued={"results": 2})
    assert Keys.rq_queue(TAGGED.results_queue) not in measured.keys
    assert measured.args[-1] == '{"results": 2}'
    assert Keys.rq_queue(TAGGED.results_queue) in fn.pump(TAGGED, 10, 1000, 1000, 8).keys


def test_slots_agree_with_the_cluster_spec() -> None:
    # the reference value of the Redis Cluster specification (CRC16 XMODEM of "123456789")
    assert key_slot(b"123456789") == 0x31C3 % 16384
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")


def test_the_pump_uses_queue_lengths_measured_by_the_caller(rclient, keys: Keys) -> None:
    run = lambda call: fn.run_sync(rclient, call)  # noqa: E731
    rclient.zadd(keys.outbox, {f"{JOB}:1": 0})
    rclient.sadd(keys.sinks, "postgres")
    rclient.zadd(keys.sinkbox("postgres"), {f"{JOB}:1": 0})
    full = run(fn.pump(keys, 10, 10_000, 10_000, 2, queued={"results": 2, "postgres": 5}))
    assert full == {"results": {}, "sinks": {}, "more": True}
    assert not rclient.exists(Keys.rq_queue(keys.results_queue))  # measured, never read
    taken = run(fn.pump(keys, 10, 10_000, 10_000, 2, queued={"results": 1}))
    assert taken["results"] == [f"{JOB}:1"] and taken["sinks"] == {"postgres": [f"{JOB}:1"]}
    with pytest.raises(Exception, match="invalid queued"):
        rclient.fcall(fn.pump(keys, 1, 1, 1, 1).name, 0, keys.namespace, 1, 1, 1, 1, "[x")


@pytest.mark.parametrize("name", ["ready", "cancel", "start", "heartbeat", "tick", "finish"])
def test_calls_that_can_retire_an_ephemeral_runner_declare_the_runner_set(name: str) -> None:
    # each can end an ephemeral runner's attempt (rule 1, a cancel, the timeout, the reaper, a
    # result), and that call removes the runner from `runners` (retire_if_ephemeral)
    assert TAGGED.runners in calls(TAGGED)[name].keys


def test_record_declares_the_log_streams_it_gives_the_records_ttl() -> None:
    call = calls(TAGGED)["record"]
    assert TAGGED.log(JOB) in call.keys  # EXPIRE log:<job> with the record's retention
    assert call.keys.count(TAGGED.job(JOB)) == 1  # two attempts of one job: declared once
