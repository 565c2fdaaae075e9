"""The agent with several URLs against scripted peers (real WebSocket servers on localhost): the
driver feeds the failover policy before the machine, so even a connection the agent gives up on
itself (no answer in time, no close frame from anyone) sends the next attempt to the next URL.

The back-off's generator is seeded so that the first attempt goes to the first URL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from http import HTTPStatus
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection

from dispatch_protocol.messages import Ready
from runner.backoff import Backoff
from runner.config import AgentConfig
from runner.driver import Agent
from tests.runner.test_runner_driver import TOKEN, dispatcher, recv

FIRST_IS_FIRST = next(s for s in range(100) if random.Random(s).randrange(2) == 0)


def agent(urls: tuple[str, ...], tmp_path: Path) -> Agent:
    config = AgentConfig(
        urls=urls,
        runner="r1",
        token=TOKEN,
        state_dir=tmp_path / "state",
        base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        open_timeout=2.0,
        poll_timeout=1,
        poll_margin=0.5,
    )
    return Agent(config, backoff=Backoff(base=0.05, cap=0.2, rng=random.Random(FIRST_IS_FIRST)))


async def run_until(agent: Agent, done: asyncio.Event) -> int:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(done.wait(), 20)
    stop.set()
    return await asyncio.wait_for(task, 15)


async def test_a_pod_that_never_answers_ready_is_left_for_the_next_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner")
    done = asyncio.Event()

    async def mute(ws: ServerConnection) -> None:
        assert isinstance(await recv(ws), Ready)
        await ws.wait_closed()  # no job, no no_job: the agent gives up after 1.5 s

    async def answers(ws: ServerConnection) -> None:
        assert isinstance(await recv(ws), Ready)
        done.set()
        await ws.wait_closed()

    async with dispatcher(mute) as first, dispatcher(answers) as second:
        assert await run_until(agent((first, second), tmp_path), done) == 0
    assert "no job or no_job from the dispatcher in time; reconnecting" in caplog.text
    assert caplog.text.count("connected to ") == 2
    assert f"next attempt goes to ws://{second.removeprefix('http://')}/" in caplog.text


async def test_a_draining_pods_503_sends_the_agent_to_the_next_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner")
    done = asyncio.Event()

    async def answers(ws: ServerConnection) -> None:
        assert isinstance(await recv(ws), Ready)
        done.set()
        await ws.wait_closed()

    async with (
        dispatcher(answers, HTTPStatus.SERVICE_UNAVAILABLE) as draining,
        dispatcher(answers) as second,
    ):
        assert await run_until(agent((draining, second), tmp_path), done) == 0
    host = draining.removeprefix("http://")
    assert f"HTTP 503 refused the WebSocket upgrade at ws://{host}/" in caplog.text
    assert caplog.text.count("connected to ") == 1
