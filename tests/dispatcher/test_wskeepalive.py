"""Keepalive on one sweep per server (``dispatcher.wskeepalive``): the decision table, the sweep
on a real loop with connections of our own making, and a real pod closing a runner that never
answers its pings with 1011 while a runner that answers stays connected."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import websockets

from dispatcher.wskeepalive import KeepaliveSweep, due_action, sweep_for
from tests.dispatcher.rawhttp import close_quietly, hold_open, upgrade_head
from tests.dispatcher.support import SPEC, eventually, submit, take_job
from tests.podkit import RawRunner, add_runner

BOUND = 10.0  # generous; only ever "within", never "not before"


@pytest.mark.parametrize(
    ("now", "due", "outstanding", "action"),
    [
        (1.0, 2.0, False, "wait"),
        (1.0, 2.0, True, "wait"),
        (2.0, 2.0, False, "ping"),
        (3.0, 2.0, True, "timeout"),
    ],
)
def test_a_connection_is_pinged_when_due_and_failed_when_its_pong_is_late(
    now, due, outstanding, action
):
    assert due_action(now, due, outstanding) == action


class Peer:
    """A connection as the sweep sees it; ``answers`` pongs every ping at once."""

    def __init__(self, sweep: KeepaliveSweep, answers: bool) -> None:
        self.sweep, self.answers = sweep, answers
        self.pings = 0
        self.timed_out = False
        self.ping_outstanding = False

    def keepalive_ping(self) -> None:
        self.pings += 1
        self.ping_outstanding = not self.answers
        if self.answers:
            asyncio.get_running_loop().call_soon(self.sweep.pong, self)

    def keepalive_timeout(self) -> None:
        self.timed_out = True


async def test_the_sweep_pings_everyone_and_fails_only_the_silent():
    sweep = KeepaliveSweep(interval=0.05, timeout=0.05)
    lively, silent = Peer(sweep, answers=True), Peer(sweep, answers=False)
    sweep.add(lively)
    sweep.add(silent)
    await eventually(lambda: silent.timed_out and lively.pings >= 3, timeout=BOUND)
    assert not lively.timed_out
    assert silent.pings == 1
    assert len(sweep) == 1  # the failed one left the table
    sweep.discard(lively)
    assert len(sweep) == 0 and sweep._timer is None  # no timer while nobody is left


async def test_without_a_timeout_pings_go_on_and_nobody_fails():
    sweep = KeepaliveSweep(interval=0.05, timeout=None)
    silent = Peer(sweep, answers=False)
    sweep.add(silent)
    await eventually(lambda: silent.pings >= 3, timeout=BOUND)
    assert not silent.timed_out
    sweep.discard(silent)


class Server:
    """Stands for uvicorn's per-server state object (any object that takes weak references)."""


def test_one_sweep_per_server():
    a, b = Server(), Server()
    assert sweep_for(a, 20, 20) is sweep_for(a, 20, 20)
    assert sweep_for(a, 20, 20) is not sweep_for(b, 20, 20)


# -- a real pod ---------------------------------------------------------------------------------


@pytest.fixture
def pinging(settings):
    return dataclasses.replace(settings, ping_interval=0.2, ping_timeout=1.0)


async def test_a_runner_that_never_answers_pings_is_closed_1011(launch, pinging):
    pod = await launch(pinging)
    token = add_runner(pinging, "r1", [SPEC])
    reader, writer = await hold_open(pod.port, upgrade_head("r1", token))
    try:
        received = await asyncio.wait_for(reader.read(-1), BOUND * 3)  # until the pod closes
    finally:
        await close_quietly(writer)
    assert received.startswith(b"HTTP/1.1 101")
    reason = b"keepalive ping timeout"
    assert b"\x88" + bytes([2 + len(reason)]) + (1011).to_bytes(2, "big") + reason in received


async def test_a_runner_that_answers_pings_stays_and_gets_jobs(launch, pinging, rclient, keys):
    pod = await launch(pinging)
    token = add_runner(pinging, "r1", [SPEC])
    ws = await websockets.connect(
        pod.ws_url("r1"),
        additional_headers={"Authorization": f"Bearer {token}"},
        ping_interval=None,
    )
    runner = RawRunner(ws, "r1")
    try:
        await asyncio.sleep(2.0)  # ten ping intervals pass; nothing to wait for but time
        job_id = submit(rclient, keys)
        assert (await take_job(runner, timeout=BOUND))["job"] == job_id
    finally:
        await runner.close()
