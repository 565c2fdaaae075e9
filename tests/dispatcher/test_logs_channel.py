"""`log` over a real pod's channel (PROTOCOL.md 1.1, rules 9-10): stored, never answered,
fenced silently, bad input closed with 1007."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest

from dispatcher import functions as fn
from dispatcher import logs
from dispatcher.keys import Keys
from tests.dispatcher.support import (
    SPEC,
    assert_usable,
    complete,
    eventually,
    expect_ack,
    job_rec,
    new_job_id,
    ready_and_waiting,
    start_job,
    submit,
)
from tests.podkit import RawRunner, add_runner, connect

RClient = Any


def chunks(rclient: RClient, keys: Keys, job_id: str) -> list[tuple[int, int, str, str]]:
    page = fn.run_sync(rclient, logs.read(keys, job_id))
    return [(c.attempt, c.seq, c.stream, c.data) for c in page.chunks]


async def claimed_job(
    pod, settings, rclient, keys, name: str = "r1", token: str = ""
) -> tuple[RawRunner, dict[str, Any]]:
    token = token or add_runner(settings, name, [SPEC])
    runner = await connect(pod, name, token)
    await ready_and_waiting(runner, rclient, keys)
    job_id = submit(rclient, keys)
    job = await runner.expect("job")
    assert job["job"] == job_id
    return runner, job


async def send_log(runner: RawRunner, job: dict[str, Any], seq: int, data: str, **extra) -> None:
    fields = {"job": job["job"], "attempt": job["attempt"], "seq": seq, "stream": "stdout"}
    await runner.send("log", **{**fields, "data": data, **extra})


async def heartbeat_acked(runner: RawRunner, job: dict[str, Any]) -> None:
    """A heartbeat's ack is the next frame: every `log` sent before it was handled, unanswered."""
    await runner.send("heartbeat", job=job["job"], attempt=job["attempt"])
    await expect_ack(runner, job["job"], "heartbeat")


async def test_chunks_before_and_after_running_are_stored_and_never_answered(
    pod, settings, rclient, keys
):
    runner, job = await claimed_job(pod, settings, rclient, keys)
    await send_log(runner, job, 0, "claimed\n")  # rule 10: accepted while claimed
    await start_job(runner, job)  # its ack is the next frame: the log got no answer
    await send_log(runner, job, 1, "warn\n", stream="stderr")
    await heartbeat_acked(runner, job)
    assert chunks(rclient, keys, job["job"]) == [
        (job["attempt"], 0, "stdout", "claimed\n"),
        (job["attempt"], 1, "stderr", "warn\n"),
    ]


async def test_a_resend_after_a_reconnect_is_stored_once(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner, job = await claimed_job(pod, settings, rclient, keys, token=token)
    await start_job(runner, job)
    await send_log(runner, job, 0, "a")
    await send_log(runner, job, 1, "b")
    await heartbeat_acked(runner, job)
    await runner.close()
    again = await connect(pod, "r1", token)
    await send_log(again, job, 1, "b")  # before `running`: the runner still owns the job
    await send_log(again, job, 2, "c")
    await start_job(again, job)
    assert [c[3] for c in chunks(rclient, keys, job["job"])] == ["a", "b", "c"]


async def test_a_log_for_another_job_or_attempt_is_dropped_silently(pod, settings, rclient, keys):
    runner, job = await claimed_job(pod, settings, rclient, keys)
    await start_job(runner, job)
    ghost = {"job": new_job_id(), "attempt": 1}
    stale = {"job": job["job"], "attempt": job["attempt"] + 1}
    await send_log(runner, ghost, 0, "ghost")
    await send_log(runner, stale, 0, "stale")
    await heartbeat_acked(runner, job)  # not closed, nothing answered
    assert chunks(rclient, keys, job["job"]) == []
    assert not rclient.exists(keys.log(ghost["job"]))


async def test_a_log_after_the_terminal_message_is_dropped(pod, settings, rclient, keys):
    runner, job = await claimed_job(pod, settings, rclient, keys)
    await start_job(runner, job)
    await send_log(runner, job, 0, "kept")
    await complete(runner, job)
    await send_log(runner, job, 1, "late")
    await assert_usable(runner, rclient, keys)  # still open, and the next frame is the job
    assert [c[3] for c in chunks(rclient, keys, job["job"])] == ["kept"]


async def test_a_log_while_polling_keeps_the_poll_and_stores_nothing(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    await ready_and_waiting(runner, rclient, keys)
    ghost = {"job": new_job_id(), "attempt": 1}
    await send_log(runner, ghost, 0, "while polling")
    job_id = submit(rclient, keys)
    assert (await runner.expect("job"))["job"] == job_id  # the poll was still open
    assert not rclient.exists(keys.log(ghost["job"]))


async def test_a_log_does_not_extend_the_lease(pod, settings, rclient, keys):
    runner, job = await claimed_job(pod, settings, rclient, keys)
    await start_job(runner, job)
    before = rclient.zscore(keys.leases, job["job"])
    for seq in range(3):
        await send_log(runner, job, seq, "x")
    await eventually(lambda: len(chunks(rclient, keys, job["job"])) == 3, 5.0, what="3 chunks")
    assert rclient.zscore(keys.leases, job["job"]) == before


async def test_data_of_64_kib_is_accepted_and_one_byte_more_closes_1007(
    pod, settings, rclient, keys
):
    runner, job = await claimed_job(pod, settings, rclient, keys)
    await start_job(runner, job)
    await send_log(runner, job, 0, "é" * (32 * 1024))  # 65,536 bytes of UTF-8
    await heartbeat_acked(runner, job)
    await send_log(runner, job, 1, "é" * (32 * 1024) + "x")
    code, reason = await runner.closed()
    assert code == 1007 and "log data over" in reason
    assert len(chunks(rclient, keys, job["job"])) == 1
    assert job_rec(rclient, keys, job["job"])["status"] == "running"  # the job keeps its lease


@pytest.mark.parametrize(
    "bad",
    [
        {"stream": "stdin"},
        {"seq": -1},
        {"seq": 1.5},
        {"seq": "1"},
        {"seq": None},
        {"data": 42},
        {"attempt": 0},
        {"job": "not-a-uuid"},
    ],
    ids=["stream", "seq-negative", "seq-float", "seq-text", "seq-null", "data", "attempt", "job"],
)
async def test_a_log_off_the_schema_closes_1007_and_changes_nothing(
    pod, settings, rclient, keys, bad
):
    runner, job = await claimed_job(pod, settings, rclient, keys)
    await start_job(runner, job)
    fields = {"job": job["job"], "attempt": job["attempt"], "seq": 0, "stream": "stdout"}
    await runner.ws.send(json.dumps({"event": "log", **fields, "data": "x", **bad}))
    code, _ = await runner.closed()
    assert code == 1007
    assert not rclient.exists(keys.log(job["job"]))
    assert job_rec(rclient, keys, job["job"])["status"] == "running"


async def test_past_the_limit_the_pod_drops_chunks_and_notes_it(launch, settings, rclient, keys):
    pod = await launch(dataclasses.replace(settings, log_max_bytes=2 * (100 + 64)))
    runner, job = await claimed_job(pod, settings, rclient, keys)
    await start_job(runner, job)
    for seq in range(4):
        await send_log(runner, job, seq, str(seq) * 100)
    await heartbeat_acked(runner, job)
    log = chunks(rclient, keys, job["job"])
    assert [c[2] for c in log] == ["stdout", "stdout", "note"]
    assert "200 bytes in 2 chunks dropped" in log[-1][3]


async def test_past_the_log_rate_the_pod_reads_the_connection_more_slowly_and_drops_nothing(
    launch, settings, rclient, keys
):
    pod = await launch(dataclasses.replace(settings, log_rate=64 * 1024))
    runner, job = await claimed_job(pod, settings, rclient, keys)
    await start_job(runner, job)
    started = time.monotonic()
    for seq in range(12):  # 192 KiB: 64 KiB at once, the other 128 KiB at 64 KiB/s
        await send_log(runner, job, seq, "x" * 16 * 1024)
    await heartbeat_acked(runner, job)
    assert time.monotonic() - started >= 1.9  # a lower bound only: a busy machine takes longer
    assert len(chunks(rclient, keys, job["job"])) == 12
