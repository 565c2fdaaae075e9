"""`dispatcher runner rotate`: a new token at once, the old one refused, a live connection closed
with 4001, the runner's specs and its job in flight kept."""

from __future__ import annotations

import dataclasses

import pytest
import websockets

from dispatcher import admin, functions
from dispatcher.cli import main
from dispatcher.errors import InvalidInput
from dispatcher.tokens import token_hash
from tests.dispatcher.support import (
    SPEC,
    expect_ack,
    idle_runners,
    job_rec,
    lease,
    ready_and_waiting,
    runner_rec,
    start_job,
    submit,
    take_job,
    until_pod,
)
from tests.podkit import add_runner, connect


async def refused(pod, name: str, token: str) -> int:
    with pytest.raises(websockets.exceptions.InvalidStatus) as refusal:
        await connect(pod, name, token)
    return refusal.value.response.status_code


async def test_rotate_closes_a_polling_connection_with_4001_and_swaps_the_token(
    pod, settings, rclient, keys
):
    old = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", old)
    await ready_and_waiting(runner, rclient, keys)
    new, closed = admin.rotate_runner(rclient, keys, "r1")
    assert closed is True and new != old
    code, reason = await runner.closed(timeout=5)
    assert code == 4001 and reason.strip()
    assert idle_runners(rclient, keys) == []  # out of the idle sets in the rotating call
    assert runner_rec(rclient, keys, "r1")["state"] == "offline"
    assert await refused(pod, "r1", old) == 401
    again = await connect(pod, "r1", new)
    job_id = submit(rclient, keys)
    assert (await take_job(again))["job"] == job_id  # same record, same specs
    await again.close()


async def test_rotate_keeps_the_job_in_flight_for_the_runner_back_with_the_new_token(
    launch, settings, rclient, keys
):
    pod = await launch(dataclasses.replace(settings, lease_timeout=30))
    old = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", old)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    new, closed = admin.rotate_runner(rclient, keys, "r1")
    assert closed
    assert (await runner.closed(timeout=5))[0] == 4001
    assert job_rec(rclient, keys, job_id)["status"] == "running"
    assert lease(rclient, keys, job_id) is not None
    assert runner_rec(rclient, keys, "r1")["state"] == "busy"
    back = await connect(pod, "r1", new)
    await until_pod(rclient, keys, "r1", pod.id)
    await back.send("running", job=job_id, attempt=job["attempt"])  # rule 1: re-attach
    await expect_ack(back, job_id, "running")
    await back.send("completed", job=job_id, attempt=job["attempt"], exit_code=0, results=None)
    await expect_ack(back, job_id, "completed")
    assert job_rec(rclient, keys, job_id)["status"] in ("completed", "processed")
    await back.close()


async def test_rotate_of_an_offline_runner_only_swaps_the_token(pod, settings, rclient, keys):
    old = add_runner(settings, "r1", [SPEC])
    before = runner_rec(rclient, keys, "r1")
    new, closed = admin.rotate_runner(rclient, keys, "r1")
    assert closed is False
    after = runner_rec(rclient, keys, "r1")
    assert after.pop("token_hash") != before.pop("token_hash")
    assert after == before
    assert await refused(pod, "r1", old) == 401
    runner = await connect(pod, "r1", new)
    await until_pod(rclient, keys, "r1", pod.id)
    await runner.close()


def test_rotate_on_the_command_line_shows_the_token_once(rclient, keys, redis_url, capsys):
    base = ["--redis-url", redis_url, "--namespace", keys.namespace]
    assert main([*base, "runner", "add", "r1", "--spec", SPEC]) == 0
    capsys.readouterr()
    assert main([*base, "runner", "rotate", "r1"]) == 0
    out = capsys.readouterr().out
    token = out.split("token: ")[1].split()[0]
    assert "shown only this once" in out and "refused from now on" in out
    assert rclient.hget(keys.runner("r1"), "token_hash") == token_hash(token)
    events = [f["event"] for _, f in rclient.xrange(keys.events)]
    assert events[-1] == "runner_rotated"


def test_rotate_refuses_a_bad_hash_and_changes_nothing(rclient, keys, settings):
    add_runner(settings, "r1", [SPEC])
    before = runner_rec(rclient, keys, "r1")
    with pytest.raises(InvalidInput, match="invalid token hash"):
        functions.run_sync(rclient, functions.runner_rotate(keys, "r1", "not-a-hash"))
    assert runner_rec(rclient, keys, "r1") == before
