"""Bad input closes the channel with PROTOCOL.md's close code and changes no job or runner state."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
import websockets

from tests.dispatcher.support import (
    SPEC,
    expect_ack,
    idle_runners,
    job_rec,
    pending_ids,
    ready_and_waiting,
    runner_rec,
    start_job,
    state_of,
    submit,
    until_pod,
)
from tests.podkit import add_runner, connect


async def job_in_flight(pod, settings, rclient, keys, name="r1"):
    token = add_runner(settings, name, [SPEC])
    runner = await connect(pod, name, token)
    await ready_and_waiting(runner, rclient, keys)
    job_id = submit(rclient, keys)
    job = await runner.expect("job")
    await start_job(runner, job)
    return runner, job_id


async def assert_closed_without_change(runner, rclient, keys, job_id, before, code):
    got, reason = await runner.closed()
    assert got == code, (got, reason)
    assert reason.strip(), "a close always carries a reason"
    await until_pod(rclient, keys, runner.name, "")  # the pod finished its side of the close
    after = state_of(rclient, keys, job_id, runner.name)
    assert after == before
    rec = runner_rec(rclient, keys, runner.name)
    assert (rec["state"], rec["job"], rec["pod"]) == ("busy", job_id, "")
    return reason


async def test_binary_frame_closes_1003_and_changes_nothing(pod, settings, rclient, keys):
    runner, job_id = await job_in_flight(pod, settings, rclient, keys)
    before = state_of(rclient, keys, job_id, "r1")
    await runner.ws.send(json.dumps({"event": "heartbeat", "job": job_id, "attempt": 1}).encode())
    await assert_closed_without_change(runner, rclient, keys, job_id, before, 1003)


BAD_TEXT = {
    "not_json": "not valid json{{{",
    "truncated_json": '{"event": "ready"',
    "json_array": "[1, 2]",
    "json_string": '"ready"',
    "no_event": '{"poll_timeout": 5}',
    "event_not_string": '{"event": 5}',
    "unknown_event": '{"event": "bogus"}',
    "server_event_from_runner": '{"event": "no_job"}',
    "poll_timeout_0": '{"event": "ready", "poll_timeout": 0}',
    "poll_timeout_901": '{"event": "ready", "poll_timeout": 901}',
    "poll_timeout_string": '{"event": "ready", "poll_timeout": "5"}',
    "poll_timeout_fraction": '{"event": "ready", "poll_timeout": 1.5}',
    "poll_timeout_bool": '{"event": "ready", "poll_timeout": true}',
    "poll_timeout_null": '{"event": "ready", "poll_timeout": null}',
    "runner_info_incomplete": '{"event": "ready", "runner": {"version": "1"}}',
}

# job-scoped messages about the job in flight, each off the schema in one field
BAD_JOB_MESSAGES = {
    "running_attempt_0": {"event": "running", "attempt": 0},
    "running_attempt_negative": {"event": "running", "attempt": -1},
    "running_attempt_string": {"event": "running", "attempt": "1"},
    "running_no_attempt": {"event": "running"},
    "heartbeat_bad_uuid": {"event": "heartbeat", "job": "not-a-uuid", "attempt": 1},
    "heartbeat_job_number": {"event": "heartbeat", "job": 42, "attempt": 1},
    "completed_no_exit_code": {"event": "completed", "attempt": 1, "results": None},
    "completed_exit_code_string": {"event": "completed", "attempt": 1, "exit_code": "0"},
    "completed_attempt_0": {"event": "completed", "attempt": 0, "exit_code": 0},
    "completed_stdout_number": {"event": "completed", "attempt": 1, "exit_code": 0, "stdout": 1},
    "failed_no_error": {"event": "failed", "attempt": 1, "exit_code": 1},
    "canceled_bad_uuid": {"event": "canceled", "job": "1234", "attempt": 1},
}


@pytest.mark.parametrize("text", list(BAD_TEXT.values()), ids=list(BAD_TEXT))
async def test_invalid_frame_closes_1007_and_changes_nothing(pod, settings, rclient, keys, text):
    runner, job_id = await job_in_flight(pod, settings, rclient, keys)
    before = state_of(rclient, keys, job_id, "r1")
    await runner.ws.send(text)
    await assert_closed_without_change(runner, rclient, keys, job_id, before, 1007)


@pytest.mark.parametrize("message", list(BAD_JOB_MESSAGES.values()), ids=list(BAD_JOB_MESSAGES))
async def test_schema_mismatch_closes_1007_and_changes_nothing(
    pod, settings, rclient, keys, message
):
    runner, job_id = await job_in_flight(pod, settings, rclient, keys)
    before = state_of(rclient, keys, job_id, "r1")
    await runner.ws.send(json.dumps({"job": job_id, **message}))
    await assert_closed_without_change(runner, rclient, keys, job_id, before, 1007)


async def test_ready_while_a_job_is_in_flight_closes_1008_and_keeps_the_attempt(
    pod, settings, rclient, keys
):
    runner, job_id = await job_in_flight(pod, settings, rclient, keys)
    before = state_of(rclient, keys, job_id, "r1")
    await runner.send("ready", poll_timeout=1)
    await assert_closed_without_change(runner, rclient, keys, job_id, before, 1008)
    assert job_rec(rclient, keys, job_id)["status"] == "running"  # rule 1 did not end it


async def test_ready_while_a_claimed_job_is_in_flight_closes_1008(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    await runner.send("ready", poll_timeout=5)
    await runner.expect("job")
    before = state_of(rclient, keys, job_id, "r1")
    await runner.send("ready", poll_timeout=5)
    code, reason = await runner.closed()
    assert (code, bool(reason)) == (1008, True)
    await until_pod(rclient, keys, "r1", "")  # the pod finished its side of the close
    assert state_of(rclient, keys, job_id, "r1") == before
    assert job_rec(rclient, keys, job_id)["status"] == "claimed"


async def test_ready_while_a_poll_is_open_closes_1008_and_leaves_no_waiting_runner(
    pod, settings, rclient, keys
):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    await ready_and_waiting(runner, rclient, keys)
    assert idle_runners(rclient, keys) == ["r1"]
    core = {
        k: v
        for k, v in runner_rec(rclient, keys, "r1").items()
        if k in ("name", "token_hash", "specs", "job", "attempt")
    }
    await runner.send("ready", poll_timeout=10)
    code, reason = await runner.closed()
    assert code == 1008
    assert reason.strip()
    await until_pod(rclient, keys, "r1", "")  # the pod finished its side of the close
    rec = runner_rec(rclient, keys, "r1")
    assert {k: rec[k] for k in core} == core
    assert (rec["state"], rec["pod"]) == ("offline", "")
    assert idle_runners(rclient, keys) == []
    job_id = submit(rclient, keys)  # nobody is waiting any more: the job is queued
    assert job_rec(rclient, keys, job_id)["status"] == "pending"
    assert pending_ids(rclient, keys) == [job_id]


async def test_message_over_the_size_limit_closes_1009_and_changes_nothing(
    launch, settings, rclient, keys
):
    small = dataclasses.replace(settings, max_message_bytes=64 * 1024)
    pod = await launch(small)
    runner, job_id = await job_in_flight(pod, small, rclient, keys)
    before = state_of(rclient, keys, job_id, "r1")
    await runner.send(
        "completed", job=job_id, attempt=1, exit_code=0, results=None, stdout="x" * (70 * 1024)
    )
    await assert_closed_without_change(runner, rclient, keys, job_id, before, 1009)
    assert job_rec(rclient, keys, job_id)["status"] == "running"


async def test_message_under_the_size_limit_is_accepted(launch, settings, rclient, keys):
    small = dataclasses.replace(settings, max_message_bytes=64 * 1024)
    pod = await launch(small)
    runner, job_id = await job_in_flight(pod, small, rclient, keys)
    stdout = "y" * (60 * 1024)
    await runner.send("completed", job=job_id, attempt=1, exit_code=0, results=None, stdout=stdout)
    await expect_ack(runner, job_id, "completed")
    rec = job_rec(rclient, keys, job_id)
    assert (rec["status"], rec["stdout"]) == ("completed", stdout)


async def test_invalid_utf8_text_frame_closes_1007_with_a_reason(pod, settings, rclient, keys):
    runner, job_id = await job_in_flight(pod, settings, rclient, keys)
    before = state_of(rclient, keys, job_id, "r1")
    ws = runner.ws
    async with ws.send_context():  # a text frame whose payload is not UTF-8
        ws.protocol.send_text(b'{"event": "heartbeat\xff"}')
    await assert_closed_without_change(runner, rclient, keys, job_id, before, 1007)


async def test_ready_twice_in_a_row_closes_1008(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    await runner.send("ready", poll_timeout=5)
    await runner.send("ready", poll_timeout=5)  # pipelined: the first poll is still open
    code, reason = await runner.closed()
    assert (code, bool(reason.strip())) == (1008, True)
    await until_pod(rclient, keys, "r1", "")  # the pod finished its side of the close
    assert idle_runners(rclient, keys) == []
    assert runner_rec(rclient, keys, "r1")["job"] == ""


async def test_default_size_limit_is_4_mib(pod, settings, rclient, keys):
    runner, job_id = await job_in_flight(pod, settings, rclient, keys)
    before = state_of(rclient, keys, job_id, "r1")
    # Without compression the pod sees the frame's length in its header and closes with 1009
    # while the runner is still writing it: the send itself may fail then. The close code the
    # runner received is what the protocol promises, whichever side notices first.
    with contextlib.suppress(websockets.ConnectionClosed, ConnectionResetError):
        await runner.send(
            "completed",
            job=job_id,
            attempt=1,
            exit_code=0,
            results=None,
            stdout="z" * (4 * 1024 * 1024),
        )
    await assert_closed_without_change(runner, rclient, keys, job_id, before, 1009)


async def test_default_size_limit_accepts_a_message_just_under_4_mib(pod, settings, rclient, keys):
    runner, job_id = await job_in_flight(pod, settings, rclient, keys)
    await runner.send(
        "completed",
        job=job_id,
        attempt=1,
        exit_code=0,
        results=None,
        stdout="z" * (4 * 1024 * 1024 - 1024),
    )
    await expect_ack(runner, job_id, "completed")


async def test_size_limit_counts_bytes_not_characters(launch, settings, rclient, keys):
    small = dataclasses.replace(settings, max_message_bytes=64 * 1024)
    pod = await launch(small)
    runner, job_id = await job_in_flight(pod, small, rclient, keys)
    before = state_of(rclient, keys, job_id, "r1")
    stdout = "\u2713" * (30 * 1024)  # 30 Ki characters, 90 KiB of UTF-8
    await runner.send("completed", job=job_id, attempt=1, exit_code=0, results=None, stdout=stdout)
    await assert_closed_without_change(runner, rclient, keys, job_id, before, 1009)
