"""A subscription that dies silently (no error, no close: a half-open connection, a proxy that
stops forwarding) is found by the pod's doorbell probe and rebuilt."""

from __future__ import annotations

import asyncio
import dataclasses
from urllib.parse import urlparse

import httpx

from dispatcher.pod import pod as pod_module
from tests.dispatcher.support import SPEC, eventually, submit, take_job
from tests.podkit import add_runner, connect


class FreezingProxy:
    """A TCP proxy in front of Redis that can silently stop answering the subscribers it saw."""

    def __init__(self, upstream: str) -> None:
        url = urlparse(upstream)
        self.upstream = (url.hostname or "127.0.0.1", url.port or 6379)
        self.db = url.path or "/0"
        self.subscribers: list[asyncio.StreamWriter] = []
        self.frozen: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}{self.db}"

    def freeze_subscribers(self) -> int:
        self.frozen.update(self.subscribers)
        return len(self.frozen)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(
            self._pump(client_r, up_w, client_w, upward=True),
            self._pump(up_r, client_w, client_w, upward=False),
            return_exceptions=True,
        )

    async def _pump(self, reader, writer, client_w, upward: bool) -> None:
        while data := await reader.read(65536):
            # the RESP form of the command name, not the word (the Lua library's text has it)
            is_subscribe = b"$10\r\nSSUBSCRIBE\r\n" in data.upper()
            if upward and is_subscribe and client_w not in self.subscribers:
                self.subscribers.append(client_w)
            if not upward and client_w in self.frozen:
                continue  # swallowed: the connection looks alive and says nothing
            writer.write(data)
            await writer.drain()
        writer.close()


async def test_a_silently_dead_subscription_is_found_by_the_probe_and_rebuilt(
    launch, settings, rclient, keys, monkeypatch
):
    monkeypatch.setattr(pod_module, "PROBE_EVERY_TICKS", 2)  # a probe every 0.4 s here
    proxy = FreezingProxy(settings.redis_url)
    pod = await launch(dataclasses.replace(settings, redis_url=await proxy.start()))
    await eventually(lambda: len(proxy.subscribers) == 1, 3.0)
    assert proxy.freeze_subscribers() == 1

    async with httpx.AsyncClient() as http:

        async def readyz() -> int:
            return (await http.get(pod.url + "/readyz")).status_code

        # the probe that never comes back is noticed, and a new subscription is made
        for _ in range(100):
            if len(proxy.subscribers) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(proxy.subscribers) == 2
        for _ in range(100):
            if await readyz() == 200:
                break
            await asyncio.sleep(0.05)
        assert await readyz() == 200

    # and the doorbell works again (the new subscriber is not frozen)
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys)
    assert (await take_job(runner))["job"] == job_id
