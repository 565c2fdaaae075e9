"""The bell carries the offer: a match's bell is enough to send the `job`, fenced by connection
generation, with the inbox and the reconcile as the safety net (real pods, real websockets)."""

from __future__ import annotations

import dataclasses
import json

import redis

from dispatcher import functions
from dispatcher.keys import Keys
from dispatcher.pod import Pod
from dispatcher.pod.bells import Bell, Offer, parse_bell
from dispatcher.pod.doorbell import PROBE
from dispatcher.settings import Settings
from tests.dispatcher.conftest import Launch
from tests.dispatcher.support import (
    SPEC,
    RClient,
    eventually,
    job_rec,
    new_job_id,
    ready_and_waiting,
    runner_rec,
    start_job,
    submit,
    take_job,
)
from tests.podkit import RawRunner, RunningPod, add_runner, connect

# -- parsing (pure) -------------------------------------------------------------------------------


def test_a_plain_bell_names_only_its_runner() -> None:
    assert parse_bell(b"r-1.a@b+c") == Bell("r-1.a@b+c")


def test_a_match_bell_carries_generation_job_attempt_and_offer() -> None:
    payload = b'{"command": ["echo", "a\\nb"],\n "x": 1}'
    bell = parse_bell(b"r1 7 j-1 2 linux/x86 3600 1733112345678\n" + payload)
    offer = Offer("j-1", 2, "linux/x86", payload, 3600.0, 1733112345678)
    assert bell == Bell("r1", 7, "j-1", 2, offer)


def test_a_match_bell_without_its_payload_carries_no_offer() -> None:
    assert parse_bell(b"r1 7 j-1 2 linux 0.5 1733112345678") == Bell("r1", 7, "j-1", 2, None)


def test_a_match_bell_whose_head_does_not_parse_is_a_bell_for_its_first_word() -> None:
    assert parse_bell(b"r1 seven j-1 2 linux 1 1\n{}") == Bell("r1")
    assert parse_bell(b"r1 7 j-1\n{}") == Bell("r1")


def test_a_message_that_names_no_runner_is_refused() -> None:
    assert parse_bell(b"") is None
    assert parse_bell(b"bad/name") is None
    assert parse_bell(b"\xff\xfe") is None
    assert parse_bell(b" 7 j 1 s 1 1\n{}") is None


# -- what a match publishes -------------------------------------------------------------------


async def idle_runner(
    pod: RunningPod, settings: Settings, rclient: RClient, keys: Keys
) -> RawRunner:
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    await ready_and_waiting(runner, rclient, keys)
    return runner


def next_bell(pubsub: redis.client.PubSub, timeout: float = 5.0) -> bytes:
    message = pubsub.get_sharded_message(timeout=timeout)
    while message is not None and message["type"] != "smessage":
        message = pubsub.get_sharded_message(timeout=timeout)
    assert message is not None, "no bell"
    data: bytes = message["data"]
    return data


async def test_a_match_publishes_the_offer_for_the_runners_generation(
    pod: RunningPod, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    runner = await idle_runner(pod, settings, rclient, keys)
    listener = redis.Redis.from_url(settings.redis_url)
    pubsub = listener.pubsub()
    try:
        pubsub.ssubscribe(keys.pod_channel(pod.id))
        job_id = submit(rclient, keys, payload={"command": ["make", "test"]})
        bell = parse_bell(next_bell(pubsub))
        frame = await runner.expect("job")
    finally:
        pubsub.close()
        listener.close()
    assert bell is not None and bell.offer is not None
    assert (bell.runner, bell.conn) == ("r1", int(runner_rec(rclient, keys, "r1")["conn"]))
    assert (bell.job, bell.attempt) == (job_id, 1)
    assert json.loads(bell.offer.payload) == {"command": ["make", "test"]}
    assert (frame["job"], frame["attempt"], frame["payload"]) == (
        job_id,
        1,
        {"command": ["make", "test"]},
    )


async def test_a_payload_over_the_inline_bound_rides_no_bell_and_is_still_delivered(
    pod: RunningPod, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    runner = await idle_runner(pod, settings, rclient, keys)
    big = {"blob": "x" * 20_000}
    listener = redis.Redis.from_url(settings.redis_url)
    pubsub = listener.pubsub()
    try:
        pubsub.ssubscribe(keys.pod_channel(pod.id))
        job_id = submit(rclient, keys, payload=big)
        bell = parse_bell(next_bell(pubsub))
        frame = await runner.expect("job")
    finally:
        pubsub.close()
        listener.close()
    assert bell == Bell("r1", bell.conn if bell else 0, job_id, 1, None)
    assert (frame["job"], frame["payload"]) == (job_id, big)


# -- fencing by connection generation -----------------------------------------------------------


def forged_bell(runner: str, conn: int, job: str) -> str:
    return f'{runner} {conn} {job} 1 {SPEC} 60 1733112345678\n{{"forged": true}}'


async def test_a_bell_for_an_older_generation_is_not_delivered_on_the_newer_connection(
    pod: RunningPod, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    token = add_runner(settings, "r1", [SPEC])
    first = await connect(pod, "r1", token)
    old_conn = int(runner_rec(rclient, keys, "r1")["conn"])
    second = await connect(pod, "r1", token)  # supersedes the first (4002)
    assert (await first.closed())[0] == 4002
    await ready_and_waiting(second, rclient, keys)
    assert int(runner_rec(rclient, keys, "r1")["conn"]) == old_conn + 1
    rclient.spublish(keys.pod_channel(pod.id), forged_bell("r1", old_conn, new_job_id()))
    real = submit(rclient, keys)  # published after the forged bell: handled after it
    frame = await second.expect("job")
    assert frame["job"] == real


async def test_a_bell_for_the_current_generation_is_sent_without_reading_redis(
    pod: RunningPod, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    """The positive control of the fencing test: the same forged bell, for the generation that
    is polling, is sent as it is (no job record exists for it)."""
    runner = await idle_runner(pod, settings, rclient, keys)
    conn = int(runner_rec(rclient, keys, "r1")["conn"])
    forged = new_job_id()
    rclient.spublish(keys.pod_channel(pod.id), forged_bell("r1", conn, forged))
    frame = await runner.expect("job")
    assert (frame["job"], frame["payload"]) == (forged, {"forged": True})


async def bell_handled(the_pod: Pod, rclient: RClient, keys: Keys) -> None:
    """Wait until the pod has handled every bell published so far (a probe after them is back)."""
    seen = the_pod.doorbell.probe_seen
    rclient.spublish(keys.pod_channel(the_pod.id), PROBE)
    await eventually(lambda: the_pod.doorbell.probe_seen != seen, 5.0, what="the probe back")


# -- the safety net -------------------------------------------------------------------------------


async def test_a_lost_bell_is_made_good_by_the_reconcile(
    pod: RunningPod, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    runner = await idle_runner(pod, settings, rclient, keys)
    the_pod = pod.server.pod
    the_pod.doorbell._on_bell = lambda bell: None  # every bell from now on is lost
    recoveries = the_pod.metrics.recoveries._value.get()
    job_id = submit(rclient, keys)
    frame = await runner.expect("job", timeout=10 * settings.reconcile_interval + 5)
    assert frame["job"] == job_id
    assert the_pod.metrics.recoveries._value.get() == recoveries + 1
    await eventually(lambda: rclient.scard(keys.pod_inbox(pod.id)) == 0, what="inbox emptied")


async def test_a_bell_after_the_reconcile_sent_the_job_sends_nothing_more(
    pod: RunningPod, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    runner = await idle_runner(pod, settings, rclient, keys)
    the_pod = pod.server.pod
    held: list[Bell] = []
    the_pod.doorbell._on_bell = held.append  # hold the bells back
    job_id = submit(rclient, keys)
    await eventually(lambda: len(held) == 1, 5.0, what="the bell")
    frame = await runner.expect("job", timeout=10 * settings.reconcile_interval + 5)  # the tick
    assert frame["job"] == job_id
    the_pod._on_bell(held[0])  # the bell comes late
    await start_job(runner, frame)  # the next frame is the ack, not a second `job`
    assert [m["event"] for m in runner.received] == ["job", "ack"]


async def test_a_bell_repeated_after_its_delivery_sends_nothing_more(
    pod: RunningPod, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    runner = await idle_runner(pod, settings, rclient, keys)
    listener = redis.Redis.from_url(settings.redis_url)
    pubsub = listener.pubsub()
    try:
        pubsub.ssubscribe(keys.pod_channel(pod.id))
        job_id = submit(rclient, keys)
        bell = next_bell(pubsub)
    finally:
        pubsub.close()
        listener.close()
    frame = await runner.expect("job")
    assert frame["job"] == job_id
    the_pod = pod.server.pod
    await the_pod.tick()  # a reconcile seeing the runner too
    rclient.spublish(keys.pod_channel(pod.id), bell)  # and the same bell again
    await bell_handled(the_pod, rclient, keys)
    await start_job(runner, frame)
    assert [m["event"] for m in runner.received] == ["job", "ack"]


async def test_a_bell_for_an_attempt_given_back_at_the_linger_end_is_never_sent(
    launch: Launch, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    """A match's bell that reaches the pod only after the pod gave that attempt back (no `ready`
    came in the linger) and after the runner polls again is not sent: the job is another
    runner's by then, and sending it would start it twice."""
    pod = await launch(dataclasses.replace(settings, linger=0.5))
    the_pod = pod.server.pod
    held: list[Bell] = []
    on_bell = the_pod.doorbell._on_bell
    the_pod.doorbell._on_bell = lambda bell: (
        held.append(bell) if bell.runner == "r1" and bell.job else on_bell(bell)
    )
    late = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    other = await connect(pod, "y1", add_runner(settings, "y1", [SPEC]))
    await late.send("ready", poll_timeout=1)
    await late.expect("no_job", timeout=10)  # lingering: still in the idle sets
    job_id = submit(rclient, keys)  # matched to r1; its bell is held back
    await eventually(lambda: len(held) == 1, 10, what="the bell held")
    # no `ready` in the linger: the pod gives attempt 1 back, and y1 takes the job (attempt 2)
    await eventually(
        lambda: job_rec(rclient, keys, job_id)["status"] == "pending", 10, what="given back"
    )
    frame = await take_job(other)
    assert (frame["job"], frame["attempt"]) == (job_id, 2)
    await ready_and_waiting(late, rclient, keys)  # r1 polls again
    on_bell(held[0])  # and only now the old bell arrives
    await bell_handled(the_pod, rclient, keys)
    second = submit(rclient, keys)
    assert (await late.expect("job"))["job"] == second  # not the job y1 is running


# -- the inbox entry of a bell-delivered job: settled by the runner's `running` --------------------


async def test_the_running_of_a_bell_delivered_job_empties_the_inbox_without_an_observe(
    launch: Launch, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    # ticks far apart: only the `running` can take the runner out of the inbox here
    pod = await launch(dataclasses.replace(settings, reconcile_interval=30.0, pod_ttl=120.0))
    runner = await idle_runner(pod, settings, rclient, keys)
    the_pod = pod.server.pod
    observed: list[str] = []
    observe = the_pod.observe

    async def counting(name: str) -> None:
        observed.append(name)
        await observe(name)

    the_pod.observe = counting  # type: ignore[method-assign,assignment]
    job_id = submit(rclient, keys)
    frame = await runner.expect("job")
    assert frame["job"] == job_id
    await bell_handled(the_pod, rclient, keys)
    assert rclient.sismember(keys.pod_inbox(pod.id), "r1")  # the match's entry, not yet settled
    await start_job(runner, frame)
    assert not rclient.sismember(keys.pod_inbox(pod.id), "r1")
    assert observed == []  # the bell and the `running` were enough: no observe call at all
    assert job_rec(rclient, keys, job_id)["status"] == "running"


async def test_news_after_the_bell_stays_in_the_inbox_and_is_observed(
    pod: RunningPod, settings: Settings, rclient: RClient, keys: Keys
) -> None:
    """The job is canceled between its bell and the runner's `running`: `start` refuses it and
    leaves the entry; the cancel's own bell (or the tick) pushes `cancel`."""
    runner = await idle_runner(pod, settings, rclient, keys)
    job_id = submit(rclient, keys)
    frame = await runner.expect("job")
    functions.run_sync(rclient, functions.cancel(keys, job_id))
    await runner.send("running", job=job_id, attempt=frame["attempt"])
    pushed = await runner.expect("cancel")
    assert pushed["job"] == job_id
