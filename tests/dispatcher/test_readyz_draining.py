"""A draining pod says so on /readyz: a load balancer's health check takes it out of rotation at
once instead of sending the runners it just closed with 1001 straight back to it (issue 13)."""

from __future__ import annotations

import httpx
import pytest
import websockets

from tests.dispatcher.support import SPEC
from tests.podkit import add_runner, connect


async def test_readyz_is_503_with_draining_once_the_drain_starts(launch, settings):
    pod = await launch(settings)
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    async with httpx.AsyncClient() as http:
        before = await http.get(pod.url + "/readyz")
        assert before.status_code == 200 and before.json()["ready"] is True

        # the first step of the SIGTERM drain, with uvicorn still serving HTTP
        await pod.server.pod.close_sockets()
        assert (await runner.closed())[0] == 1001

        during = await http.get(pod.url + "/readyz")
        assert during.status_code == 503
        assert during.json() == {"ready": False, "pod": pod.id, "draining": True}
        assert (await http.get(pod.url + "/healthz")).status_code == 200  # alive, not ready


async def test_a_handshake_while_draining_is_refused_503_before_the_upgrade(launch, settings):
    pod = await launch(settings)
    token = add_runner(settings, "r1", [SPEC])
    await pod.server.pod.close_sockets()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(pod, "r1", token)
    assert refused.value.response.status_code == 503
