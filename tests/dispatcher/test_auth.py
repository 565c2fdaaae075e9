"""Authentication and the connect rate limit run before the upgrade and change no state."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
import websockets

from tests.dispatcher.support import (
    SPEC,
    eventually,
    expect_ack,
    job_rec,
    pending_ids,
    revoke,
    runner_rec,
    start_job,
    submit,
    take_job,
)
from tests.podkit import RunningPod, add_runner, connect


async def handshake(pod: RunningPod, runner: str, authorization: str | None) -> int:
    """Try the upgrade; return the HTTP status of a refusal (101 when accepted)."""
    headers = {} if authorization is None else {"Authorization": authorization}
    try:
        ws = await websockets.connect(
            pod.ws_url(runner), additional_headers=headers, open_timeout=5
        )
    except websockets.exceptions.InvalidStatus as exc:
        return int(exc.response.status_code)
    await ws.close()
    return 101


def everything(rclient, keys):
    """Every runner record and every job, for before/after comparison."""
    runners = {name: runner_rec(rclient, keys, name) for name in rclient.smembers(keys.runners)}
    jobs = {key: rclient.hgetall(key) for key in rclient.scan_iter(keys.job("*"))}
    return {
        "runners": runners,
        "jobs": jobs,
        "pending": pending_ids(rclient, keys),
        "idle": rclient.zrange(keys.idle(SPEC), 0, -1),
    }


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token {token}",
        "{token}",
        "Bearer {token} extra",
        "Bearer {token}x",
        "Bearer bad-token",
    ],
    ids=[
        "no_header",
        "empty",
        "scheme_only",
        "scheme_blank",
        "basic",
        "other_scheme",
        "no_scheme",
        "two_tokens",
        "token_plus_char",
        "wrong_token",
    ],
)
async def test_bad_authorization_is_refused_401_before_upgrade_and_changes_nothing(
    pod, settings, rclient, keys, header
):
    token = add_runner(settings, "r1", [SPEC])
    job_id = submit(rclient, keys)
    before = everything(rclient, keys)
    status = await handshake(pod, "r1", None if header is None else header.format(token=token))
    assert status == 401
    await asyncio.sleep(0.05)
    assert everything(rclient, keys) == before
    assert job_rec(rclient, keys, job_id)["status"] == "pending"


async def test_another_runners_token_is_refused_401(pod, settings, rclient, keys):
    add_runner(settings, "r1", [SPEC])
    other = add_runner(settings, "r2", [SPEC])
    submit(rclient, keys)
    before = everything(rclient, keys)
    assert await handshake(pod, "r1", f"Bearer {other}") == 401
    assert everything(rclient, keys) == before


async def test_unknown_runner_is_refused_401_and_not_created(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    before = everything(rclient, keys)
    assert await handshake(pod, "ghost", f"Bearer {token}") == 401
    assert rclient.exists(keys.runner("ghost")) == 0
    assert everything(rclient, keys) == before


async def test_revoked_runners_token_is_refused_401(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    revoke(rclient, keys, "r1")
    submit(rclient, keys)
    before = everything(rclient, keys)
    assert await handshake(pod, "r1", f"Bearer {token}") == 401
    assert rclient.exists(keys.runner("r1")) == 0
    assert everything(rclient, keys) == before


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
async def test_bearer_scheme_is_matched_case_insensitively(pod, settings, rclient, keys, scheme):
    token = add_runner(settings, "r1", [SPEC])
    ws = await websockets.connect(
        pod.ws_url("r1"), additional_headers={"Authorization": f"{scheme} {token}"}, open_timeout=5
    )
    try:
        job_id = submit(rclient, keys)
        await ws.send('{"event": "ready", "poll_timeout": 2}')
        job = await asyncio.wait_for(ws.recv(), 3)
        assert job_id in job
        assert runner_rec(rclient, keys, "r1")["pod"] == pod.id
    finally:
        await ws.close()


async def test_refused_handshake_does_not_disturb_the_live_connection(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    before = everything(rclient, keys)
    assert await handshake(pod, "r1", "Bearer wrong") == 401
    assert await handshake(pod, "r1", None) == 401
    await runner.silent(0.2)  # not superseded
    assert everything(rclient, keys) == before
    await runner.send("heartbeat", job=job_id, attempt=1)
    await expect_ack(runner, job_id, "heartbeat")


async def test_too_many_connection_attempts_are_refused_429_with_retry_after(
    launch, settings, rclient, keys
):
    pod = await launch(dataclasses.replace(settings, connect_rate=3))
    token = add_runner(settings, "r1", [SPEC])
    other = add_runner(settings, "r2", [SPEC])
    first_minute = int(time.time() // 60)
    for _ in range(3):  # within the limit, however the attempts fall on clock minutes
        assert await handshake(pod, "r1", f"Bearer {token}") == 101
    minute = int(time.time() // 60)
    counters = [rclient.get(keys.connect_rate("r1", m)) for m in range(first_minute, minute + 1)]
    assert sum(int(c or 0) for c in counters) == 3  # each attempt counted once
    # The limit counts per clock minute. The 4th attempt must be refused wherever this test runs
    # in the minute: if the three attempts straddled a boundary, top this minute's counter up to
    # the limit (a no-op otherwise), and the next minute's too in case the 4th lands there.
    for m in (minute, minute + 1):
        key = keys.connect_rate("r1", m)
        rclient.set(key, max(3, int(rclient.get(key) or 0)), ex=120)
    # every accepted connection has been attached and detached again (else `before` would race
    # the pod's bookkeeping of those connections)
    await eventually(
        lambda: (
            runner_rec(rclient, keys, "r1").get("conn") == "3"
            and runner_rec(rclient, keys, "r1").get("pod") == ""
        ),
        what="the three connections attached and detached",
    )
    before = everything(rclient, keys)

    try:
        await websockets.connect(
            pod.ws_url("r1"),
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=5,
        )
    except websockets.exceptions.InvalidStatus as exc:
        response = exc.response
    else:
        pytest.fail("the 4th attempt within a minute was accepted")
    assert response.status_code == 429
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert everything(rclient, keys) == before
    # the limit is per runner: another runner still connects
    assert await handshake(pod, "r2", f"Bearer {other}") == 101
