"""``Client.submit_many`` / ``AsyncClient.submit_many`` against a real Redis: several jobs per round
trip, each its own atomic submit; bad input refused before anything is written."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dispatcher import submission
from dispatcher.client import AsyncClient, Client
from dispatcher.errors import InvalidInput
from dispatcher.keys import LIBRARY_NAME, Keys
from dispatcher.settings import Settings
from tests.jobflow import SPEC, FakePod


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings) as c:
        yield c


def namespace_keys(rclient: redis.Redis, keys: Keys) -> list[str]:
    return list(rclient.scan_iter(match=f"{keys.namespace}:*", count=1000))


def fcalls(rclient: redis.Redis) -> int:
    return int(rclient.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0))


def test_submits_every_job_in_order_with_its_own_options(client: Client) -> None:
    jobs: list[dict[str, Any]] = [
        {"spec": SPEC, "payload": {"i": 0}},
        {"spec": SPEC, "payload": {"i": 1}, "priority": 5, "timeout": 7, "max_attempts": 2},
        {"spec": "other", "payload": [1, 2], "retries": 1, "retry_delay": 3, "group": "g"},
    ]
    ids = client.submit_many(jobs)
    assert len(ids) == 3 and len(set(ids)) == 3
    records = [client.get(job_id) for job_id in ids]
    assert [r["payload"] for r in records] == [{"i": 0}, {"i": 1}, [1, 2]]
    assert [r["spec"] for r in records] == [SPEC, SPEC, "other"]
    assert (records[1]["priority"], records[1]["timeout"], records[1]["max_attempts"]) == (5, 7, 2)
    assert (records[2]["retries"], records[2]["retry_delay"], records[2]["group"]) == (1, 3, "g")
    assert all(r["status"] == "pending" for r in records)


def test_one_round_trip_per_batch_and_matching_as_submit(
    client: Client, rclient: redis.Redis, keys: Keys
) -> None:
    pod = FakePod(rclient, keys)
    assert pod.ready() == {"result": "idle"}
    n = submission.SUBMIT_BATCH + 5
    before = fcalls(rclient)
    ids = client.submit_many({"spec": SPEC, "payload": {"i": i}} for i in range(n))
    assert fcalls(rclient) - before == n  # one FCALL per job, sent in 2 pipelines
    assert len(ids) == n
    first = client.get(ids[0])  # the idle runner took the first job, as a plain submit would
    assert (first["status"], first["runner"]) == ("claimed", "r1")
    assert rclient.zcard(keys.pending(SPEC)) == n - 1


def test_the_same_ids_again_create_nothing(
    client: Client, rclient: redis.Redis, keys: Keys
) -> None:
    jobs = [{"spec": SPEC, "payload": {"i": i}, "job_id": str(uuid.uuid4())} for i in range(5)]
    ids = client.submit_many(jobs)
    assert ids == [j["job_id"] for j in jobs]
    assert client.submit_many(jobs) == ids
    assert rclient.zcard(keys.pending(SPEC)) == 5


def test_empty_input_submits_nothing(client: Client, rclient: redis.Redis, keys: Keys) -> None:
    assert client.submit_many([]) == []
    assert namespace_keys(rclient, keys) == []


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"spec": "has space"}, ValueError, r"^jobs\[2\]: .*spec"),
        ({"payload": {}}, TypeError, r"^jobs\[2\]: .*spec"),  # spec missing
        ({"spec": SPEC, "colour": "red"}, TypeError, r"^jobs\[2\]: .*colour"),
        ({"spec": SPEC, "timeout": 0}, ValueError, r"^jobs\[2\]: .*timeout"),
        ({"spec": SPEC, "job_id": "not-a-uuid"}, ValueError, r"^jobs\[2\]: .*id"),
        ("make test", TypeError, r"^jobs\[2\]: a mapping"),
    ],
)
def test_bad_item_raises_naming_it_and_writes_nothing(
    client: Client, rclient: redis.Redis, keys: Keys, bad: Any, error: type[Exception], match: str
) -> None:
    jobs = [{"spec": SPEC}, {"spec": SPEC}, bad, {"spec": SPEC}]
    with pytest.raises(error, match=match):
        client.submit_many(jobs)
    assert namespace_keys(rclient, keys) == []


def test_a_repeated_job_id_is_refused_before_writing(
    client: Client, rclient: redis.Redis, keys: Keys
) -> None:
    job_id = str(uuid.uuid4())
    jobs = [{"spec": SPEC, "job_id": job_id}, {"spec": SPEC}, {"spec": SPEC, "job_id": job_id}]
    with pytest.raises(ValueError, match=rf"^jobs\[2\]: job_id {job_id} repeats jobs\[0\]"):
        client.submit_many(jobs)
    assert namespace_keys(rclient, keys) == []


def test_a_job_redis_refuses_is_named_and_the_others_go_in(
    client: Client, rclient: redis.Redis, keys: Keys
) -> None:
    taken = client.submit(SPEC, {"v": 1}, job_id=str(uuid.uuid4()))
    jobs = [
        {"spec": SPEC, "payload": {"i": 0}},
        {"spec": SPEC, "payload": {"v": 2}, "job_id": taken},  # same id, other content
        {"spec": SPEC, "payload": {"i": 2}},
    ]
    with pytest.raises(InvalidInput, match=r"^jobs\[1\]: job .* different content .*jobs\[2\]"):
        client.submit_many(jobs)
    assert client.get(taken)["payload"] == {"v": 1}
    assert rclient.zcard(keys.pending(SPEC)) == 3  # the first job, the taken one, the third


def test_a_fresh_redis_gets_the_library_loaded(client: Client, rclient: redis.Redis) -> None:
    rclient.function_delete(LIBRARY_NAME)
    ids = client.submit_many([{"spec": SPEC}, {"spec": SPEC}])
    assert [client.get(job_id)["status"] for job_id in ids] == ["pending", "pending"]


async def test_async_twin(settings: Settings, rclient: redis.Redis, keys: Keys) -> None:
    async with AsyncClient(settings) as c:
        ids = await c.submit_many({"spec": SPEC, "payload": {"i": i}} for i in range(3))
        assert [(await c.get(job_id))["payload"] for job_id in ids] == [{"i": i} for i in range(3)]
        with pytest.raises(ValueError, match=r"^jobs\[0\]: .*spec"):
            await c.submit_many([{"spec": ""}])
    assert rclient.zcard(keys.pending(SPEC)) == 3
