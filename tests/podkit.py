"""Test kit: real dispatcher pods (uvicorn on loopback, in this process) and raw runner clients."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import redis
import websockets
from websockets.asyncio.client import ClientConnection

from dispatcher import functions
from dispatcher.keys import Keys
from dispatcher.server import PodServer, build_server
from dispatcher.settings import Settings
from dispatcher.tokens import new_token, token_hash

START_TIMEOUT = 30.0  # generous: a busy 2-core machine can take seconds to start a pod


@dataclass
class RunningPod:
    server: PodServer
    task: asyncio.Task[None]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, runner: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/runners/{runner}/channel"

    @property
    def id(self) -> str:
        return self.server.pod.id

    async def stop(self) -> None:
        """Graceful stop: channels closed with 1001, then uvicorn exits."""
        if not self.task.done():
            await self.server.drain()
            await asyncio.wait_for(self.task, 10)


async def start_pod(settings: Settings) -> RunningPod:
    """A pod on a free loopback port, served in this process."""
    return await start_pod_on_port(settings, 0)


async def start_pod_on_port(settings: Settings, port: int = 0) -> RunningPod:
    """Like ``start_pod``, on a given loopback port (0: any free one) bound with SO_REUSEADDR.

    For a pod *restart*: a runner agent knows one URL, so a new pod bound to the port of a pod
    that was just stopped is what that agent reconnects to. Start the first pod with this helper
    too: the old pod's closed connections linger in TIME_WAIT, and Linux lets the new pod bind the
    port only if those connections (which inherit it from their listening socket) and the new
    socket all have SO_REUSEADDR.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    server = build_server(settings, port=port, signals=False, log_level="warning")
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    while not (server.started or task.done()):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    assert server.started, "pod did not start"
    # ready as /readyz means it: a bell rung before the subscription is live would wait for a tick
    pod = server.pod
    while not (settings.wake == "poll" or pod.doorbell.live or task.done()):
        if asyncio.get_running_loop().time() > deadline:
            break  # a test of a broken doorbell sees it for itself
        await asyncio.sleep(0.01)
    return RunningPod(server, task, port)


def add_runner(settings: Settings, name: str, specs: list[str]) -> str:
    """Register a runner straight through the Redis function; returns its token."""
    token = new_token()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        functions.run_sync(
            client, functions.runner_add(Keys(settings.namespace), name, token_hash(token), specs)
        )
    finally:
        client.close()
    return token


@dataclass
class RawRunner:
    """A runner speaking PROTOCOL.md over a real websockets client, frame by frame."""

    ws: ClientConnection
    name: str
    received: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, event: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"event": event, **fields}))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        text = await asyncio.wait_for(self.ws.recv(), timeout)
        message: dict[str, Any] = json.loads(text)
        self.received.append(message)
        return message

    async def expect(self, event: str, timeout: float = 5.0) -> dict[str, Any]:
        message = await self.recv(timeout)
        assert message["event"] == event, message
        return message

    async def silent(self, seconds: float) -> None:
        """Assert nothing arrives for ``seconds``."""
        try:
            message = await asyncio.wait_for(self.ws.recv(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {message!r}")

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Wait for the server to close; return (code, reason)."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (None, "")

    async def close(self) -> None:
        await self.ws.close()


async def connect(pod: RunningPod, name: str, token: str, **kwargs: Any) -> RawRunner:
    ws = await websockets.connect(
        pod.ws_url(name),
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=5,
        **kwargs,
    )
    return RawRunner(ws, name)
