"""Edge cases found in review: presence lapses, long close reasons, cancels that race delivery,
revoked runners, handshake races."""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from rq import Queue

from dispatcher import functions
from dispatcher.errors import InvalidInput
from tests.dispatcher.support import (
    SPEC,
    eventually,
    job_rec,
    new_job_id,
    queued_results,
    ready_and_waiting,
    revoke,
    runner_rec,
    submit,
    take_job,
    until_pod,
)
from tests.podkit import add_runner, connect


async def test_a_pod_whose_presence_lapsed_closes_its_channels_so_runners_reconnect(
    launch, settings, rclient, keys
):
    pod = await launch(settings)
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    await ready_and_waiting(runner, rclient, keys, poll_timeout=30)  # attached, in a long poll
    # another pod's tick found this pod past its deadline and detached its runners
    rclient.zadd(keys.pods, {pod.id: 1})
    functions.run_sync(rclient, functions.tick(keys, "other-pod", 10_000))
    assert runner_rec(rclient, keys, "r1")["pod"] == ""
    code, reason = await runner.closed(timeout=10)
    assert code == 1001 and "presence" in reason
    # the runner reconnects and is served again
    again = await connect(pod, "r1", add_runner_token(settings, rclient, keys))
    await until_pod(rclient, keys, "r1", pod.id)  # the upgrade comes before the attach
    job_id = submit(rclient, keys)
    assert (await take_job(again))["job"] == job_id


def add_runner_token(settings, rclient, keys) -> str:
    """A new token for r1 (revoke and add again; the test only needs a working credential)."""
    revoke(rclient, keys, "r1")
    return add_runner(settings, "r1", [SPEC])


async def test_a_long_non_ascii_invalid_message_closes_1007_with_a_reason_of_at_most_123_bytes(
    launch, settings
):
    pod = await launch(settings)
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    await runner.ws.send(json.dumps({"event": "é" * 200}, ensure_ascii=False))
    code, reason = await runner.closed()
    assert code == 1007
    assert reason and len(reason.encode()) <= 123


async def test_a_job_canceled_before_its_bell_is_handled_is_sent_then_canceled_at_once(
    launch, settings, rclient, keys
):
    """The match's bell carries the offer, so the pod sends the job without reading Redis; the
    cancel's bell, right behind it, has the pod push `cancel` (PROTOCOL rule 5)."""
    pod = await launch(settings)
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    await ready_and_waiting(runner, rclient, keys, poll_timeout=30)
    # submit and cancel in one transaction: the job is assigned, then canceled
    job_id = new_job_id()
    pipe = rclient.pipeline(transaction=True)
    pipe.fcall(
        functions.submit(keys, job_id, SPEC, "{}", 0, 60, 1).name,
        0,
        *functions.submit(keys, job_id, SPEC, "{}", 0, 60, 1).args,
    )
    pipe.fcall(functions.cancel(keys, job_id).name, 0, *functions.cancel(keys, job_id).args)
    pipe.execute()
    assert job_rec(rclient, keys, job_id)["status"] == "canceled"
    assert (await runner.expect("job"))["job"] == job_id
    assert await runner.expect("cancel") == {
        "event": "cancel",
        "job": job_id,
        "attempt": 1,
        "reason": "canceled",
    }
    next_job = submit(rclient, keys)
    assert (await take_job(runner))["job"] == next_job


def test_a_revoked_runners_late_message_does_not_recreate_its_record(rclient, keys):
    functions.run_sync(rclient, functions.tick(keys, "p", 10_000))
    functions.run_sync(rclient, functions.runner_add(keys, "r1", "h", [SPEC]))
    conn = functions.run_sync(rclient, functions.attach(keys, "r1", "p"))["conn"]
    functions.run_sync(rclient, functions.ready(keys, "r1", conn, ""))
    job_id = submit(rclient, keys)
    revoke(rclient, keys, "r1")
    for call in (
        functions.start(keys, "r1", job_id, 1),
        functions.heartbeat(keys, "r1", job_id, 1),
    ):
        assert functions.run_sync(rclient, call) == {"result": "cancel", "reason": "lease_lost"}
    assert not rclient.exists(keys.runner("r1"))
    assert job_rec(rclient, keys, job_id)["status"] == "claimed"  # reaped by its start deadline


@pytest.mark.parametrize("name", ["a/b", "", "x" * 129, "sp ace"])
def test_runner_names_that_cannot_be_a_url_segment_are_refused(rclient, keys, name):
    with pytest.raises(InvalidInput):
        functions.run_sync(rclient, functions.runner_add(keys, name, "h", [SPEC]))
    assert not rclient.exists(keys.runners)


async def test_a_cancel_by_fcall_gets_its_result_batch_queued_by_a_pods_tick(
    launch, settings, rclient, keys
):
    """Producers in other languages cancel with FCALL and queue nothing: the outbox, written in
    the same function as the cancel, is pumped into an rq batch by a pod's tick; the entry stays
    in the outbox (hidden until the batch's visibility ends) until a writer records it."""
    await launch(settings)
    job_id = submit(rclient, keys)
    assert functions.run_sync(rclient, functions.cancel(keys, job_id))
    assert rclient.zrange(keys.outbox, 0, -1) == [f"{job_id}:0"]
    queue = Queue(keys.results_queue, connection=redis.Redis.from_url(settings.redis_url))
    await eventually(lambda: len(queue.job_ids) == 1, 3.0, what="a results batch queued")
    batch = queue.jobs[0]
    assert batch.func_name == "worker_bridge.tasks.process_batch"
    assert batch.args == (keys.namespace, [f"{job_id}:0"])
    assert f"{job_id}:0" in queued_results(rclient, keys)
    now_ms = rclient.time()[0] * 1000
    assert rclient.zscore(keys.outbox, f"{job_id}:0") > now_ms  # hidden while the batch holds it


@pytest.mark.parametrize("compression", [True, False])
async def test_permessage_deflate_follows_the_setting(launch, settings, rclient, keys, compression):
    pod = await launch(dataclasses.replace(settings, ws_compression=compression))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    assert bool(runner.ws.protocol.extensions) is compression
    job_id = submit(rclient, keys)
    assert (await take_job(runner))["job"] == job_id


async def test_a_background_call_that_loses_redis_is_logged_and_counted_not_left_unretrieved(
    pod, caplog
):
    """A bell's send-and-observe or an inbox observe runs as a background task: a Redis error
    there (a failover, a restart) is a warning and a count, and the tick retries; it never
    surfaces as asyncio's "Task exception was never retrieved"."""
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    no_retry = Retry(NoBackoff(), 0)
    dead = redis.asyncio.Redis(port=dead_port, socket_connect_timeout=1, retry=no_retry)
    errors = pod.server.pod.metrics.redis_errors.labels("background")
    before = errors._value.get()
    pod.server.pod.spawn(dead.ping())
    await eventually(
        lambda: errors._value.get() == before + 1, timeout=30, what="the error counted"
    )
    await dead.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert any("background call failed" in m for m in messages), messages
    assert not any("never retrieved" in m for m in messages), messages
    assert not pod.server.pod._background
