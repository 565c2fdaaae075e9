"""`dispatcher serve` as operators run it: a subprocess, stopped by a signal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import httpx
import pytest

from dispatcher.up import free_port
from tests.podkit import add_runner


async def _wait_ready(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            try:
                if (await http.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("pod never became ready")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_closes_every_channel_with_1001_and_the_process_exits_0(settings, sig):
    import websockets

    port = free_port()
    env = {
        **os.environ,
        "DISPATCHER_REDIS_URL": settings.redis_url,
        "DISPATCHER_NAMESPACE": settings.namespace,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await _wait_ready(f"http://127.0.0.1:{port}")
        token = add_runner(settings, "r1", ["linux"])
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/v1/runners/r1/channel",
            additional_headers={"Authorization": f"Bearer {token}"},
        )
        proc.send_signal(sig)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
        assert closed.value.rcvd.reason
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
