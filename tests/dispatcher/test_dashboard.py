"""`dispatcher dashboard` served on a real socket, checked against real Redis state."""

from __future__ import annotations

import dataclasses
import re

import httpx

from dispatcher.adminserver import start_app
from dispatcher.dashboard import dashboard_app
from tests.dispatcher.support import ready_and_waiting, submit, take_job
from tests.podkit import add_runner, connect


async def test_dashboard_shows_redis_state(launch, settings, rclient, keys):
    pod = await launch(settings)
    idle = await connect(pod, "idle-1", add_runner(settings, "idle-1", ["other"]))
    busy = await connect(pod, "busy-1", add_runner(settings, "busy-1", ["linux"]))
    await ready_and_waiting(idle, rclient, keys, poll_timeout=30, spec="other")
    job_id = submit(rclient, keys, spec="linux")
    await take_job(busy)
    waiting_id = submit(rclient, keys, spec="nobody")

    server = await start_app(dashboard_app(settings, ttl=0), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            page = await http.get("/")
            state = (await http.get("/api/state")).json()
            record = (await http.get(f"/api/job/{job_id}")).json()
            missing = await http.get("/api/job/no-such-job")
    finally:
        await server.stop()

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # the tables the script fills, and the JSON route it reads (relative: works under a prefix)
    for table in ("specs", "pods", "results", "runners", "in-flight", "recent", "events"):
        assert f'id="{table}"' in page.text
    assert re.search(r'fetch\("api/state"', page.text)

    assert state["namespace"] == keys.namespace
    assert state["specs"]["nobody"]["pending"] == 1
    assert state["specs"]["other"]["idle_runners"] == 1
    assert state["pods"] == [{"pod": pod.id, "runners": 2}]
    runners = {r["name"]: r for r in state["runners"]}
    assert runners["busy-1"]["state"] == "busy"
    assert runners["busy-1"]["job"] == job_id
    assert runners["idle-1"]["state"] == "idle"
    assert runners["idle-1"]["specs"] == ["other"]
    assert [(j["id"], j["status"], j["runner"]) for j in state["in_flight"]] == [
        (job_id, "claimed", "busy-1")
    ]
    assert {j["id"] for j in state["recent"]} >= {job_id, waiting_id}
    events = [(e["event"], e.get("job")) for e in state["events"]]
    assert ("claimed", job_id) in events and ("submitted", waiting_id) in events
    assert state["runner_states"] == {"idle": 1, "busy": 1, "offline": 0}
    assert record["id"] == job_id and record["runner"] == "busy-1"
    assert missing.status_code == 404


async def test_dashboard_token(settings):
    app = dashboard_app(dataclasses.replace(settings, dashboard_token="s3cret"))
    server = await start_app(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            assert (await http.get("/")).status_code == 401
            assert (await http.get("/api/state?token=wrong")).status_code == 401
            assert (await http.get("/api/state?token=s3cret")).status_code == 200
            bearer = {"Authorization": "Bearer s3cret"}
            assert (await http.get("/api/state", headers=bearer)).status_code == 200
            assert (await http.get("/?token=s3cret")).status_code == 200
    finally:
        await server.stop()
