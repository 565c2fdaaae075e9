"""Concurrency groups, straight through the Redis Functions: at most `limit` jobs of a group
claimed or running, a saturated group never blocks others, a slot freed goes out at once."""

from __future__ import annotations

import pytest

from dispatcher import functions as fn
from dispatcher import groups
from dispatcher.client import AsyncClient, Client
from dispatcher.errors import ConfigError, InvalidInput
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.dispatcher.groupkit import (
    RClient,
    connect,
    finish,
    in_flight,
    live_pod,
    ready,
    run,
    runner_of,
    set_limit,
    status,
    submit,
)


@pytest.fixture
def idle4(rclient: RClient, keys: Keys) -> dict[str, int]:
    """Four runners of SPEC waiting in their long polls (r0 longest)."""
    live_pod(rclient, keys)
    conns = {f"r{i}": connect(rclient, keys, f"r{i}") for i in range(4)}
    for name, conn in conns.items():
        assert ready(rclient, keys, name, conn)["result"] == "idle"
    return conns


def test_no_more_than_limit_jobs_of_a_group_go_out(
    rclient: RClient, keys: Keys, idle4: dict[str, int]
) -> None:
    set_limit(rclient, keys, "org-42", 2)
    jobs = [submit(rclient, keys, "org-42") for _ in range(4)]
    assert [status(rclient, keys, j) for j in jobs] == ["claimed", "claimed", "pending", "pending"]
    assert rclient.scard(keys.group_inflight("org-42")) == 2


def test_a_saturated_group_does_not_block_other_jobs_of_the_spec(
    rclient: RClient, keys: Keys
) -> None:
    live_pod(rclient, keys)
    set_limit(rclient, keys, "full", 1)
    first = submit(rclient, keys, "full", priority=9)  # pending: no runner yet
    blocked = [submit(rclient, keys, "full", priority=9) for _ in range(3)]
    other = submit(rclient, keys, "other", priority=1)
    plain = submit(rclient, keys, priority=5)
    later = submit(rclient, keys, "other", priority=1)
    order = []
    for i in range(4):
        name = f"r{i}"
        reply = ready(rclient, keys, name, connect(rclient, keys, name))
        order.append(reply.get("job"))
    # priority, then age, among the jobs whose group has room; the full group's others wait
    assert order == [first, plain, other, later]
    assert [status(rclient, keys, j) for j in blocked] == ["pending"] * 3


def test_a_finished_group_job_hands_its_slot_to_an_idle_runner_at_once(
    rclient: RClient, keys: Keys, idle4: dict[str, int]
) -> None:
    set_limit(rclient, keys, "org", 1)
    a, b = submit(rclient, keys, "org"), submit(rclient, keys, "org")
    assert (status(rclient, keys, a), status(rclient, keys, b)) == ("claimed", "pending")
    finish(rclient, keys, runner_of(rclient, keys, a), a)
    # the same call that recorded a's outcome claimed b for a waiting runner (no tick)
    assert status(rclient, keys, b) == "claimed"
    assert runner_of(rclient, keys, b) in {"r1", "r2", "r3"}
    assert rclient.smembers(keys.group_inflight("org")) == {b}


@pytest.mark.parametrize("outcome", ["failed", "canceled", "cancel"])
def test_every_terminal_outcome_frees_the_slot(
    rclient: RClient, keys: Keys, idle4: dict[str, int], outcome: str
) -> None:
    set_limit(rclient, keys, "org", 1)
    a, b = submit(rclient, keys, "org"), submit(rclient, keys, "org")
    if outcome == "cancel":
        assert run(rclient, fn.cancel(keys, a))
    else:
        finish(rclient, keys, runner_of(rclient, keys, a), a, outcome)
    assert status(rclient, keys, b) == "claimed"


def test_a_reaped_job_frees_its_slot(rclient: RClient, keys: Keys, idle4: dict[str, int]) -> None:
    set_limit(rclient, keys, "org", 1)
    a, b = submit(rclient, keys, "org"), submit(rclient, keys, "org")
    # its start deadline is past, and the next lost start fails it
    rclient.hset(keys.job(a), mapping={"lost_starts": 4, "start_deadline": 0})
    rclient.zadd(keys.leases, {a: 0})
    reaped = run(rclient, fn.tick(keys, "pod-a", 600_000))["reaped"]
    assert [r[:2] for r in reaped] == [[a, "failed"]]
    assert status(rclient, keys, b) == "claimed"


def test_a_requeued_job_gives_its_slot_back_and_keeps_its_turn(
    rclient: RClient, keys: Keys
) -> None:
    live_pod(rclient, keys)
    set_limit(rclient, keys, "org", 1)
    a, b = submit(rclient, keys, "org"), submit(rclient, keys, "org")
    conn = connect(rclient, keys, "r0")
    assert ready(rclient, keys, "r0", conn)["job"] == a
    rclient.hset(keys.job(a), "start_deadline", 0)  # start deadline past: back to the queue
    rclient.zadd(keys.leases, {a: 0})
    run(rclient, fn.tick(keys, "pod-a", 600_000))
    assert status(rclient, keys, a) == "pending"
    assert rclient.scard(keys.group_inflight("org")) == 0
    conn = connect(rclient, keys, "r1")
    assert ready(rclient, keys, "r1", conn)["job"] == a  # older than b: first again
    assert status(rclient, keys, b) == "pending"


def test_a_canceled_pending_job_leaves_the_group_queue(
    rclient: RClient, keys: Keys, idle4: dict[str, int]
) -> None:
    set_limit(rclient, keys, "org", 1)
    a, b, c = (submit(rclient, keys, "org") for _ in range(3))
    assert run(rclient, fn.cancel(keys, b))
    finish(rclient, keys, runner_of(rclient, keys, a), a)
    assert (status(rclient, keys, b), status(rclient, keys, c)) == ("canceled", "claimed")
    assert rclient.zcard(keys.group_pending("org", "linux")) == 0
    assert rclient.zcard(keys.pending("linux")) == 0


def test_lowering_a_limit_cancels_nothing_and_raising_it_releases_at_once(
    rclient: RClient, keys: Keys, idle4: dict[str, int]
) -> None:
    set_limit(rclient, keys, "org", 2)
    jobs = [submit(rclient, keys, "org") for _ in range(4)]
    lowered = set_limit(rclient, keys, "org", 1)
    assert lowered == {"group": "org", "limit": 1, "inflight": 2, "released": 0}
    assert len(in_flight(rclient, keys, jobs)) == 2  # nothing canceled
    finish(rclient, keys, runner_of(rclient, keys, jobs[0]), jobs[0])
    assert len(in_flight(rclient, keys, jobs)) == 1  # still at the lower limit: none went out
    raised = set_limit(rclient, keys, "org", 3)
    assert raised["released"] == 2
    assert len(in_flight(rclient, keys, jobs)) == 3


def test_a_limit_of_zero_holds_every_job_and_no_limit_is_unlimited(
    rclient: RClient, keys: Keys, idle4: dict[str, int]
) -> None:
    set_limit(rclient, keys, "held", 0)
    held = submit(rclient, keys, "held")
    free = [submit(rclient, keys, "free") for _ in range(3)]
    assert status(rclient, keys, held) == "pending"
    assert len(in_flight(rclient, keys, free)) == 3
    assert set_limit(rclient, keys, "held", None)["released"] == 1  # back to unlimited


def test_the_namespace_default_limit_applies_to_groups_without_their_own(
    rclient: RClient, keys: Keys, idle4: dict[str, int]
) -> None:
    rclient.hset(keys.config, "group_default_limit", 1)  # what DISPATCHER_GROUP_DEFAULT_LIMIT sets
    a, b = submit(rclient, keys, "org"), submit(rclient, keys, "org")
    assert (status(rclient, keys, a), status(rclient, keys, b)) == ("claimed", "pending")
    assert set_limit(rclient, keys, "org", 2)["released"] == 1


def test_a_group_limit_spans_its_specs(rclient: RClient, keys: Keys) -> None:
    live_pod(rclient, keys)
    set_limit(rclient, keys, "org", 1)
    conns = {n: connect(rclient, keys, n, [spec]) for n, spec in (("lin", "linux"), ("mac", "mac"))}
    for name, conn in conns.items():
        ready(rclient, keys, name, conn)
    on_linux = submit(rclient, keys, "org")
    on_mac = submit(rclient, keys, "org", spec="mac")
    assert (status(rclient, keys, on_linux), status(rclient, keys, on_mac)) == (
        "claimed",
        "pending",
    )
    assert rclient.zcard(keys.pending("mac")) == 0  # hidden while the group is full
    finish(rclient, keys, "lin", on_linux)
    assert runner_of(rclient, keys, on_mac) == "mac"


def test_matching_sees_only_one_job_per_group_and_spec(rclient: RClient, keys: Keys) -> None:
    live_pod(rclient, keys)
    for g in range(50):
        set_limit(rclient, keys, f"g{g}", 1 if g else 0)
        for _ in range(3):
            submit(rclient, keys, f"g{g}")
    # g0 is held; every other group shows its best job only: bounded work per match
    assert rclient.zcard(keys.pending("linux")) == 49
    assert rclient.zcard(keys.group_pending("g7", "linux")) == 3


def test_group_list_shows_limit_inflight_and_pending(
    rclient: RClient, keys: Keys, idle4: dict[str, int]
) -> None:
    set_limit(rclient, keys, "org", 1)
    for _ in range(3):
        submit(rclient, keys, "org")
    submit(rclient, keys, "free")
    listed = groups.list_groups(rclient, keys)
    assert [(g["group"], g["limit"], g["inflight"], g["pending"]) for g in listed] == [
        ("free", None, 1, 0),
        ("org", 1, 1, 2),
    ]


def test_the_group_is_part_of_an_idempotent_submit(rclient: RClient, keys: Keys) -> None:
    live_pod(rclient, keys)
    job_id = "0b7f4a62-6f0e-4c59-9a8e-3c1d2e4f5a6b"
    assert submit(rclient, keys, "org", job_id=job_id) == job_id
    assert submit(rclient, keys, "org", job_id=job_id) == job_id
    with pytest.raises(InvalidInput, match="different content"):
        submit(rclient, keys, "other", job_id=job_id)
    assert rclient.hget(keys.job(job_id), "group") == "org"


@pytest.mark.parametrize("bad", ["", "a:b", "x" * 129, "sp ace", "org/1"])
def test_a_bad_group_name_is_refused_and_changes_nothing(
    rclient: RClient, keys: Keys, bad: str
) -> None:
    if bad:  # (an empty group in a submit means none)
        with pytest.raises(InvalidInput, match="invalid group"):
            run(rclient, fn.submit(keys, "", "linux", "{}", 0, 60, 1, group=bad))
    with pytest.raises(InvalidInput, match="invalid group"):
        set_limit(rclient, keys, bad, 1)
    assert list(rclient.scan_iter(match=f"{keys.namespace}:*")) == []


@pytest.mark.parametrize("bad", ["-1", "1.5", "x", "1000001"])
def test_a_bad_limit_is_refused_and_changes_nothing(rclient: RClient, keys: Keys, bad: str) -> None:
    with pytest.raises(InvalidInput, match="invalid limit"):
        run(rclient, fn.Call("dispatch_v3_group_set", (), (keys.namespace, "org", bad), str))
    assert list(rclient.scan_iter(match=f"{keys.namespace}:*")) == []


def test_python_checks_name_the_argument() -> None:
    with pytest.raises(ValueError, match="invalid group"):
        groups.check_group("a:b")
    with pytest.raises(TypeError, match="limit must be an integer"):
        groups.check_limit(True)
    with pytest.raises(ValueError, match="limit must be from 0"):
        groups.check_limit(-1)


def test_a_negative_default_limit_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="group_default_limit"):
        Settings.from_env({"DISPATCHER_GROUP_DEFAULT_LIMIT": "-1"})
    assert Settings.from_env({"DISPATCHER_GROUP_DEFAULT_LIMIT": "5"}).group_default_limit == 5


def test_jobs_waiting_for_their_group_are_listed_as_pending(
    settings: Settings, rclient: RClient, keys: Keys, idle4: dict[str, int]
) -> None:
    set_limit(rclient, keys, "org", 1)
    jobs = [submit(rclient, keys, "org") for _ in range(3)]
    with Client(settings) as client:
        listed = {j["id"]: j["status"] for j in client.jobs(limit=10)}
        assert listed == {jobs[0]: "claimed", jobs[1]: "pending", jobs[2]: "pending"}
        assert [j["id"] for j in client.jobs(status="pending", spec="linux")] == jobs[:0:-1]
        assert client.resolve(jobs[2][:8]) == jobs[2]


def test_a_job_waiting_for_a_delayed_retry_holds_no_slot(
    rclient: RClient, keys: Keys, idle4: dict[str, int]
) -> None:
    set_limit(rclient, keys, "org", 1)
    a = run(rclient, fn.submit(keys, "", "linux", "{}", 0, 3600, 1, 1, 600, group="org"))
    b = submit(rclient, keys, "org")
    finish(rclient, keys, runner_of(rclient, keys, a), a, "failed")  # retried in 600 s
    assert rclient.hget(keys.job(a), "retry_at")
    assert status(rclient, keys, b) == "claimed"  # the slot went on at once
    assert rclient.smembers(keys.group_inflight("org")) == {b}


async def test_the_async_client_sets_limits_lists_groups_and_pauses(
    settings: Settings, rclient: RClient, keys: Keys
) -> None:
    live_pod(rclient, keys)
    conn = connect(rclient, keys, "r0")
    ready(rclient, keys, "r0", conn)
    client = AsyncClient(settings)
    try:
        assert (await client.set_group_limit("org", 1))["limit"] == 1
        assert (await client.pause_runner("r0"))["paused"] is True
        job = await client.submit("linux", {"command": ["true"]}, group="org")
        assert [(g["group"], g["pending"]) for g in await client.groups()] == [("org", 1)]
        assert (await client.resume_runner("r0"))["job"] == job
        assert [(g["group"], g["inflight"]) for g in await client.groups()] == [("org", 1)]
    finally:
        await client.close()
