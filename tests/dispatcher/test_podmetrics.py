"""/metrics of a real pod (admin port, started by the pod's lifespan) with real runners."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time

import httpx
import pytest
import websockets

from dispatcher import podmetrics
from tests.dispatcher.support import (
    complete,
    eventually,
    expect_ack,
    ready_and_waiting,
    start_job,
    submit,
    take_job,
)
from tests.dispatcher.test_fleetmetrics import samples
from tests.podkit import add_runner, connect


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_pod_metrics_on_the_admin_port(launch, settings, rclient, keys):
    admin_port = free_port()
    pod = await launch(dataclasses.replace(settings, admin_port=admin_port))
    assert pod.server.config.app.state.admin.port == admin_port
    # never on the runner-facing port
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{pod.url}/metrics")).status_code == 404

    waiting = await connect(pod, "waiting", add_runner(settings, "waiting", ["other"]))
    worker = await connect(pod, "worker", add_runner(settings, "worker", ["linux"]))
    await ready_and_waiting(waiting, rclient, keys, poll_timeout=30, spec="other")
    job_id = submit(rclient, keys, spec="linux")
    job = await take_job(worker)
    assert job["job"] == job_id
    with pytest.raises(websockets.InvalidStatus):
        await connect(pod, "worker", "not-the-token")

    got = await scrape(admin_port)
    assert got[("dispatcher_connections", ())] == 2
    assert got[("dispatcher_sockets", (("state", "in_flight"),))] == 1
    assert got[("dispatcher_sockets", (("state", "polling"),))] == 1
    assert got[("dispatcher_deliveries_total", ())] == 1
    assert got[("dispatcher_dispatch_latency_seconds_count", ())] == 1
    assert got[("dispatcher_handshakes_refused_total", (("reason", "unauthorized"),))] == 1
    assert got[("dispatcher_doorbell_live", ())] == 1
    assert got[("dispatcher_draining", ())] == 0
    assert got[("dispatcher_lease_expiries_total", (("outcome", "requeued"),))] == 0

    await waiting.close()
    await worker.close()

    await eventually(lambda: not pod.server.pod.sockets, what="both sockets detached")
    assert (await scrape(admin_port))[("dispatcher_connections", ())] == 0


def test_pod_families_is_pure():
    view = {
        "pod": "p",
        "connections": 3,
        "sockets": {"idle": 1, "polling": 2},
        "doorbell_live": False,
        "probe_age": 2.5,
        "stopping": True,
        "guard_refusals": 7,
    }
    names = {f.name: f for f in podmetrics.pod_families(view)}
    assert names["dispatcher_connections"].samples[0].value == 3
    assert names["dispatcher_doorbell_live"].samples[0].value == 0
    assert names["dispatcher_doorbell_probe_age_seconds"].samples[0].value == 2.5
    assert names["dispatcher_draining"].samples[0].value == 1
    assert names["dispatcher_guard_refusals"].samples[0].value == 7
    no_probe = {f.name: f for f in podmetrics.pod_families({**view, "probe_age": None})}
    assert no_probe["dispatcher_doorbell_probe_age_seconds"].samples == []


async def test_start_latency_fenced_replies_pump_and_doorbell_recoveries(
    launch, settings, rclient, keys
):
    """The issue's remaining pod figures, each from the real path that makes it."""
    admin_port = free_port()
    pod = await launch(dataclasses.replace(settings, admin_port=admin_port))
    runner = await connect(pod, "worker", add_runner(settings, "worker", ["linux"]))
    submit(rclient, keys, spec="linux")
    job = await take_job(runner)
    await start_job(runner, job)  # `job` sent -> `running`: one start latency
    await complete(runner, job)
    # the same outcome again: answered (rule 4) but refused by the fenced function
    await runner.send("completed", job=job["job"], attempt=job["attempt"], exit_code=0)
    await expect_ack(runner, job["job"], "completed")
    # a heartbeat for an attempt this runner does not hold: cancel pushed back
    await runner.send("heartbeat", job=job["job"], attempt=job["attempt"] + 1)
    await runner.expect("cancel")

    deadline = time.monotonic() + 10
    while (got := await scrape(admin_port)).get(("dispatcher_pump_batches_total", ()), 0) < 1:
        assert time.monotonic() < deadline, "the recorded outcome was never pumped as an rq batch"
        await asyncio.sleep(0.05)
    assert got[("dispatcher_start_latency_seconds_count", ())] == 1
    assert (
        got[
            (
                "dispatcher_fenced_messages_total",
                (("message", "completed"), ("reason", "duplicate")),
            )
        ]
        == 1
    )
    assert (
        got[
            (
                "dispatcher_fenced_messages_total",
                (("message", "heartbeat"), ("reason", "lease_lost")),
            )
        ]
        == 1
    )
    assert got[("dispatcher_pump_entries_total", (("box", "results"),))] >= 1
    assert got[("dispatcher_pump_runs_total", ())] >= 1

    # a lost doorbell: the bell is muted, so only the reconcile tick's inbox re-read delivers
    pod.server.pod.doorbell._on_bell = lambda runner: None
    await ready_and_waiting(runner, rclient, keys, spec="linux")
    before = (await scrape(admin_port))[("dispatcher_doorbell_recoveries_total", ())]
    second = submit(rclient, keys, spec="linux")
    assert (await runner.expect("job", 10))["job"] == second
    got = await scrape(admin_port)
    assert got[("dispatcher_doorbell_recoveries_total", ())] == before + 1
    await runner.close()
