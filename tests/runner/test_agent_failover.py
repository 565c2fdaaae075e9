"""An agent given several pods' URLs fails over between them: real pods, real Redis, real sockets.

Two pods serve one namespace. The agent is given both URLs; the pod it is connected to is stopped
while a job runs (SIGTERM: channels closed with 1001; SIGKILL: the connection just breaks; a port
that refuses connections). The agent must connect to the other pod, re-attach the running job
(`running` after the reconnect) so that it ends once and its result is acknowledged, and keep
taking jobs. Each job appends to a ledger file when it starts, then waits for a release file the
test creates once the switch is seen: no timing decides whether the job outlives the switch.

The ``dispatch-runner`` and ``dispatcher serve`` processes (``tests.runner.processes``) show the
real signals; the in-process agent (with an in-process pod, ``tests.podkit``) gets a seeded
generator so its first attempt deterministically goes to the URL that refuses connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from runner.backoff import Backoff
from runner.config import AgentConfig
from runner.driver import Agent
from tests.podkit import add_runner, start_pod_on_port
from tests.runner.processes import Children, eventually, free_port

SPEC = "linux"
RUNNER = "r1"
CONNECTED = re.compile(r"connected to ws://127\.0\.0\.1:(\d+)/")
ACTIVE = frozenset({"pending", "claimed", "running"})


@dataclass
class World:
    settings: Settings
    keys: Keys
    client: Client
    rclient: redis.Redis
    token: str
    tmp: Path
    children: Children

    @property
    def ledger(self) -> Path:
        return self.tmp / "ledger.txt"

    def release(self, job_id: str) -> Path:
        return self.tmp / f"release-{job_id}"

    def submit_held(self) -> str:
        """A job that starts (ledger line) and then waits until the test releases it."""
        script = (
            f'echo "start $DISPATCH_JOB_ID $DISPATCH_JOB_ATTEMPT" >> {self.ledger}\n'
            f'while [ ! -e "{self.tmp}/release-$DISPATCH_JOB_ID" ]; do sleep 0.05; done\n'
            'echo "done $DISPATCH_JOB_ATTEMPT"\n'
        )
        return self.client.submit(SPEC, {"script": script}, timeout=120, max_attempts=1)

    def submit_quick(self) -> str:
        return self.client.submit(SPEC, {"command": ["echo", "next"]}, timeout=60, max_attempts=1)

    def starts(self, job_id: str) -> int:
        text = self.ledger.read_text() if self.ledger.exists() else ""
        return sum(1 for line in text.splitlines() if line.split()[1:2] == [job_id])

    def status(self, job_id: str) -> str:
        return str(self.client.get(job_id)["status"])

    async def running(self, job_id: str) -> None:
        await eventually(lambda: self.status(job_id) == "running", 30, f"job {job_id} running")

    async def final(self, job_id: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            record = self.client.get(job_id)
            return None if record["status"] in ACTIVE else record

        record: dict[str, Any] = await eventually(check, 60, f"job {job_id} to end")
        return record

    def events(self, job_id: str) -> list[str]:
        entries: list[tuple[str, dict[str, str]]] = self.rclient.xrange(self.keys.events)  # type: ignore[assignment]
        return [fields["event"] for _id, fields in entries if fields.get("job") == job_id]

    def assert_ran_once_and_was_acknowledged(self, job_id: str, record: dict[str, Any]) -> None:
        assert (record["status"], record["attempt"], record["stdout"]) == (
            "completed",
            1,
            "done 1\n",
        )
        assert self.starts(job_id) == 1  # the job's process started once
        assert self.rclient.hget(self.keys.job(job_id), "runs") == "1"
        events = self.events(job_id)
        assert events.count("completed") == 1 and "lease_expired" not in events, events


@pytest.fixture
async def world(
    settings: Settings, keys: Keys, rclient: redis.Redis, tmp_path: Path
) -> AsyncIterator[World]:
    client = Client(settings)
    children = Children(settings, tmp_path)
    token = add_runner(settings, RUNNER, [SPEC])
    try:
        yield World(settings, keys, client, rclient, token, tmp_path, children)
    finally:
        client.close()
        await children.close()


def connections(log: str) -> list[int]:
    """The port of every pod the agent connected to, in order."""
    return [int(port) for port in CONNECTED.findall(log)]


async def connection(log: Callable[[], str], count: int) -> int:
    """The port of the agent's ``count``-th connection, once it is made."""
    ports: list[int] = await eventually(
        lambda: connections(log())[count - 1 :] or None, 60, f"connection {count} of the agent"
    )
    return ports[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_the_agent_moves_to_the_other_pod_and_the_running_job_ends_once(
    world: World, sig: signal.Signals
) -> None:
    a, b = await world.children.pod(), await world.children.pod()
    agent = await world.children.agent([a.url, b.url], RUNNER, world.token, "--poll-timeout", "5")
    first_port = await connection(agent.log, 1)
    first, other = (a, b) if first_port == a.port else (b, a)
    job_id = world.submit_held()
    await world.running(job_id)
    await eventually(lambda: world.starts(job_id) == 1, 30, "the job's start in the ledger")

    first.signal(sig)
    assert await connection(agent.log, 2) == other.port
    code = "1001" if sig is signal.SIGTERM else "None"  # no close frame from a killed pod
    assert f"connection lost (close code {code}" in agent.log()
    assert world.status(job_id) == "running"  # still held: it re-attached, it did not end
    world.release(job_id).touch()
    record = await world.final(job_id)
    await agent.logged(f"result of job {job_id} acknowledged")
    world.assert_ran_once_and_was_acknowledged(job_id, record)

    next_job = world.submit_quick()
    assert (await world.final(next_job))["stdout"] == "next\n"
    assert connections(agent.log()) == [first.port, other.port]  # all of it on the other pod
    agent.signal(signal.SIGTERM)
    assert await agent.exited() == 0
    await first.exited()
    assert world.token not in agent.log()


async def test_a_refused_url_is_skipped_and_a_pod_back_on_it_takes_over(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The first attempt goes to a port nobody listens on (a seeded start); the agent connects to
    the other pod. Later that pod stops (1001) while a job runs, and a pod is back on the first
    port: the agent goes there, re-attaches, and the job ends once."""
    caplog.set_level(logging.INFO, logger="runner")
    dead = free_port()
    live = await start_pod_on_port(world.settings)
    urls = (f"http://127.0.0.1:{dead}", live.url)
    seed = next(s for s in range(100) if random.Random(s).randrange(len(urls)) == 0)
    config = AgentConfig(
        urls=urls,
        runner=RUNNER,
        token=world.token,
        state_dir=world.tmp / "state",
        base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        open_timeout=2.0,
        kill_grace=0.5,
        poll_timeout=5,
    )
    stop = asyncio.Event()
    agent = Agent(config, backoff=Backoff(base=0.1, cap=0.5, rng=random.Random(seed)))
    task = asyncio.create_task(agent.run(stop))
    revived = None
    try:
        assert await connection(lambda: caplog.text, 1) == live.port
        assert "cannot connect to the dispatcher: " in caplog.text
        assert f"at ws://127.0.0.1:{dead}/v1/runners/{RUNNER}/channel" in caplog.text
        job_id = world.submit_held()
        await world.running(job_id)

        revived = await start_pod_on_port(world.settings, dead)
        await live.stop()
        assert await connection(lambda: caplog.text, 2) == dead
        assert world.status(job_id) == "running"
        world.release(job_id).touch()
        record = await world.final(job_id)
        await eventually(lambda: f"result of job {job_id} acknowledged" in caplog.text, 30, "ack")
        world.assert_ran_once_and_was_acknowledged(job_id, record)
        assert (await world.final(world.submit_quick()))["stdout"] == "next\n"
    finally:
        stop.set()
        code = await asyncio.wait_for(task, 20)
        await live.stop()
        if revived is not None:
            await revived.stop()
    assert code == 0
