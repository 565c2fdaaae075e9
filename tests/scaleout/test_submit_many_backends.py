"""``submit_many`` through a Redis Cluster and a Sentinel URL: the pipelined submits reach the
node serving the namespace's slot (the cluster client routes each FCALL by its declared keys), a
refused item is named, and a job goes straight to an idle runner as a plain submit's does."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dispatcher.client import AsyncClient, Client
from dispatcher.errors import InvalidInput
from dispatcher.settings import Settings
from tests.dispatcher.support import SPEC
from tests.podkit import RunningPod, connect

pytestmark = pytest.mark.timeout(120)


def test_every_job_is_submitted_in_order(settings: Settings) -> None:
    with Client(settings) as client:
        ids = client.submit_many({"spec": SPEC, "payload": {"i": i}} for i in range(250))
        assert len(set(ids)) == 250
        assert [client.get(job_id)["payload"] for job_id in (ids[0], ids[249])] == [
            {"i": 0},
            {"i": 249},
        ]
        taken = client.submit(SPEC, {"v": 1}, job_id=str(uuid.uuid4()))
        with pytest.raises(InvalidInput, match=r"^jobs\[1\]: job .* different content"):
            client.submit_many([{"spec": SPEC}, {"spec": SPEC, "job_id": taken, "payload": {}}])


async def test_the_async_twin_and_an_idle_runner(pod: RunningPod, settings: Settings) -> None:
    with Client(settings) as client:
        runner: Any = await connect(pod, "r1", client.add_runner("r1", [SPEC]))
    await runner.send("ready", poll_timeout=5)
    async with AsyncClient(settings) as c:
        ids = await c.submit_many([{"spec": SPEC, "payload": {"n": 1}}, {"spec": SPEC}])
        job = await runner.expect("job", 10)
        assert (job["job"], job["payload"]) == (ids[0], {"n": 1})
        assert (await c.get(ids[1]))["status"] == "pending"
