"""The agent end to end against a scripted peer: a real WebSocket server on localhost that plays
the dispatcher's side of PROTOCOL.md step by step. No mocks; tests against the real dispatcher
belong with the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from dispatch_protocol.messages import (
    Ack,
    Cancel,
    Canceled,
    Completed,
    Heartbeat,
    Job,
    Log,
    Ready,
    RunnerMessage,
    Running,
    ServerMessage,
    decode_runner_message,
    encode,
)
from runner.backoff import Backoff
from runner.config import AgentConfig
from runner.driver import Agent, runner_info
from runner.spool import Spool

J1 = "11111111-1111-4111-8111-111111111111"
TOKEN = "tok-0123456789"
Script = Callable[[ServerConnection], Awaitable[None]]


def job(payload: Any) -> Job:
    return Job(
        job=J1,
        attempt=1,
        spec="linux",
        payload=payload,
        timeout=30.0,
        heartbeat_interval=0.2,
        created="2025-01-01T00:00:00Z",
    )


async def send(ws: ServerConnection, message: ServerMessage) -> None:
    await ws.send(encode(message))


async def recv(ws: ServerConnection) -> RunnerMessage:
    """The next runner message that is not a heartbeat or a `log` (those come at any time)."""
    while True:
        message = decode_runner_message(await asyncio.wait_for(ws.recv(), 10))
        if not isinstance(message, Heartbeat | Log):
            return message


@asynccontextmanager
async def dispatcher(script: Script, status: HTTPStatus | None = None) -> AsyncIterator[str]:
    """Serve ``script`` for every connection; yields the base URL. ``status`` refuses them all."""

    def check(ws: ServerConnection, request: Request) -> Response | None:
        if status is not None:
            return ws.respond(status, "refused\n")
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.path == "/v1/runners/r1/channel"
        return None

    async with serve(script, "127.0.0.1", 0, process_request=check) as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"


def agent(url: str, tmp_path: Path, **options: Any) -> Agent:
    config = AgentConfig(
        urls=(url,),
        runner="r1",
        token=TOKEN,
        state_dir=tmp_path / "state",
        base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        open_timeout=2.0,
        kill_grace=0.5,
        **options,
    )
    return Agent(config, backoff=Backoff(base=0.05, cap=0.2))


async def run_until(agent: Agent, done: asyncio.Event) -> int:
    """Run the agent until the script sets ``done``, then shut it down (one request)."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(done.wait(), 15)
    stop.set()
    return await asyncio.wait_for(task, 15)


async def test_runs_a_job_reports_it_and_asks_again(tmp_path: Path) -> None:
    seen: list[RunnerMessage] = []
    done = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        seen.append(await recv(ws))
        await send(ws, job({"command": ["echo", "hi"]}))
        seen.extend([await recv(ws), await recv(ws)])
        await send(ws, Ack(job=J1, of="completed"))
        seen.append(await recv(ws))
        done.set()
        await ws.wait_closed()

    async with dispatcher(script) as url:
        assert await run_until(agent(url, tmp_path), done) == 0
    assert [type(m) for m in seen] == [Ready, Running, Completed, Ready]
    assert seen[2] == Completed(job=J1, attempt=1, exit_code=0, stdout="hi\n", stderr="")
    assert Spool(tmp_path / "state" / "r1").load_result() is None


async def test_a_held_result_goes_first_then_ready(tmp_path: Path) -> None:
    held = Completed(job=J1, attempt=3, exit_code=0, stdout="from before")
    with Spool(tmp_path / "state" / "r1") as spool:
        spool.save_result(held)
    seen: list[RunnerMessage] = []
    done = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        seen.append(await recv(ws))
        await send(ws, Ack(job=J1, of="heartbeat"))  # not the ack it waits for
        await send(ws, Ack(job=J1, of="completed"))
        seen.append(await recv(ws))
        done.set()
        await ws.wait_closed()

    async with dispatcher(script) as url:
        assert await run_until(agent(url, tmp_path), done) == 0
    assert seen == [held, Ready(poll_timeout=30, runner=runner_info())]


async def test_cancel_stops_the_job_and_reports_canceled(tmp_path: Path) -> None:
    seen: list[RunnerMessage] = []
    done = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        await recv(ws)
        await send(ws, job({"script": "sleep 30"}))
        await recv(ws)
        await send(ws, Cancel(job=J1, attempt=1, reason="canceled"))
        seen.append(await recv(ws))
        await send(ws, Ack(job=J1, of="canceled"))
        seen.append(await recv(ws))
        done.set()
        await ws.wait_closed()

    async with dispatcher(script) as url:
        assert await run_until(agent(url, tmp_path), done) == 0
    assert seen[0] == Canceled(job=J1, attempt=1) and isinstance(seen[1], Ready)


async def test_reconnecting_mid_job_reattaches_with_running(tmp_path: Path) -> None:
    connections: list[list[RunnerMessage]] = []
    done = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        seen: list[RunnerMessage] = []
        connections.append(seen)
        if len(connections) == 1:
            await recv(ws)
            await send(ws, job({"script": "sleep 0.6; echo done"}))
            seen.append(await recv(ws))
            await ws.close(1001, "pod shutting down")
            return
        seen.append(await recv(ws))
        seen.append(await recv(ws))
        await send(ws, Ack(job=J1, of="completed"))
        done.set()
        await ws.wait_closed()

    async with dispatcher(script) as url:
        assert await run_until(agent(url, tmp_path), done) == 0
    first, second = connections
    assert first == [Running(job=J1, attempt=1)]
    assert second[0] == Running(job=J1, attempt=1)  # re-attach, not ready
    assert isinstance(second[1], Completed) and second[1].stdout == "done\n"


async def test_shutdown_during_a_job_drains_and_exits_zero(tmp_path: Path) -> None:
    after_ack: list[str] = []
    stop = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        await recv(ws)
        await send(ws, job({"script": "sleep 0.5; echo finished"}))
        await recv(ws)
        stop.set()  # SIGTERM while the job runs
        result = await recv(ws)
        assert isinstance(result, Completed) and result.stdout == "finished\n"
        await send(ws, Ack(job=J1, of="completed"))
        async for frame in ws:  # a draining runner asks for nothing more
            after_ack.append(str(frame))

    async with dispatcher(script) as url:
        code = await asyncio.wait_for(agent(url, tmp_path).run(stop), 15)
    assert code == 0
    assert [f for f in after_ack if '"heartbeat"' not in f] == []


async def test_a_refused_token_is_logged_and_ends_in_exit_3(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def script(ws: ServerConnection) -> None:
        raise AssertionError("never upgraded")

    caplog.set_level(logging.INFO)
    async with dispatcher(script, status=HTTPStatus.UNAUTHORIZED) as url:
        runner = agent(url, tmp_path, max_auth_failures=3)
        assert await asyncio.wait_for(runner.run(), 15) == 3
    assert caplog.text.count("token refused") >= 3
    assert TOKEN not in caplog.text
