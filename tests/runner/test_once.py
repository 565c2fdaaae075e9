"""``dispatch-runner --once`` as a real process against a real pod (in this process) and Redis,
alone and with an ephemeral registration (``dispatcher runner add NAME --ephemeral``): the shape an
autoscaler uses, one VM or pod per job."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import websockets
from websockets.exceptions import InvalidStatus

from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from runner.config import TOKEN_ENV
from runner.machine import EXIT_ONCE_NOT_RUN
from tests.podkit import RunningPod, start_pod

SPEC = "linux"
ACTIVE = frozenset({"pending", "claimed", "running"})

Launch = Callable[..., Awaitable[asyncio.subprocess.Process]]


def _runner_command() -> list[str]:
    script = Path(sys.executable).with_name("dispatch-runner")
    return [str(script)] if script.exists() else [sys.executable, "-m", "runner"]


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(0.05)
    return value


@pytest.fixture
async def pod(settings: Settings) -> AsyncIterator[RunningPod]:
    running = await start_pod(settings)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings) as c:
        yield c


@pytest.fixture
async def launch(pod: RunningPod, tmp_path: Path) -> AsyncIterator[Launch]:
    """Start ``dispatch-runner --once`` processes; any still alive at the end are killed (by
    their own pid)."""
    started: list[asyncio.subprocess.Process] = []

    async def run(name: str, token: str, *extra: str) -> asyncio.subprocess.Process:
        environ = {**os.environ, TOKEN_ENV: token}
        log = (tmp_path / f"{name}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            *_runner_command(),
            "--url",
            pod.url,
            "--runner",
            name,
            "--state-dir",
            str(tmp_path / "state"),
            "--kill-grace",
            "0.5",
            "--once",
            *extra,
            env=environ,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        started.append(proc)
        return proc

    yield run
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def final(client: Client, job_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        record = client.get(job_id)
        return None if record["status"] in ACTIVE else record

    record: dict[str, Any] = await eventually(check, what=f"job {job_id} to end")
    return record


async def test_once_runs_one_job_and_exits_zero(launch, client, settings) -> None:
    token = client.add_runner("one", [SPEC])
    first = client.submit(SPEC, {"command": ["sh", "-c", "echo first"]})
    second = client.submit(SPEC, {"command": ["true"]})
    proc = await launch("one", token)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    record = client.get(first)
    assert (record["status"], record["stdout"]) == ("completed", "first\n")
    assert client.get(second)["status"] == "pending"  # one job, not two
    assert [r["state"] for r in client.runners()] == ["offline"]  # it left after the ack


async def test_once_exits_zero_when_the_command_fails_with_an_exit_code(launch, client) -> None:
    token = client.add_runner("one", [SPEC])
    job_id = client.submit(SPEC, {"command": ["sh", "-c", "exit 7"]})
    proc = await launch("one", token)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert (client.get(job_id)["status"], client.get(job_id)["exit_code"]) == ("failed", 7)


async def test_once_exits_non_zero_when_the_job_could_not_run(launch, client) -> None:
    token = client.add_runner("one", [SPEC])
    job_id = client.submit(SPEC, {"command": ["/nonexistent/binary"]})
    proc = await launch("one", token)
    assert await asyncio.wait_for(proc.wait(), 30) == EXIT_ONCE_NOT_RUN
    record = client.get(job_id)
    assert (record["status"], record["exit_code"]) == ("failed", None)


async def test_once_with_an_ephemeral_registration_leaves_no_runner_behind(
    launch, client, pod, settings
) -> None:
    token = client.add_runner("vm-7f3a", [SPEC], ephemeral=True)
    job_id = client.submit(SPEC, {"command": ["sh", "-c", "echo built"]})
    proc = await launch("vm-7f3a", token)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert (await final(client, job_id))["status"] == "completed"
    assert client.runners() == []
    with redis.Redis.from_url(settings.redis_url) as conn:
        assert not conn.exists(Keys(settings.namespace).runner("vm-7f3a"))
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(
            pod.ws_url("vm-7f3a"), additional_headers={"Authorization": f"Bearer {token}"}
        )
    assert refused.value.response.status_code == 401


async def test_once_and_retries_a_fresh_ephemeral_runner_per_attempt(
    launch, client, tmp_path: Path
) -> None:
    """What an autoscaler does: one ephemeral runner per attempt; the command fails once
    (a marker file makes the second attempt succeed) and the retry goes to the next VM."""
    marker = tmp_path / "failed-once"
    script = f'test -e "{marker}" && echo second || {{ touch "{marker}"; exit 5; }}'
    job_id = client.submit(SPEC, {"script": script}, retries=1)
    codes = []
    for vm in ("vm-1", "vm-2"):
        token = client.add_runner(vm, [SPEC], ephemeral=True)
        proc = await launch(vm, token)
        codes.append(await asyncio.wait_for(proc.wait(), 30))
    assert codes == [0, 0]
    record = await final(client, job_id)
    assert (record["status"], record["stdout"], record["retries_used"]) == (
        "completed",
        "second\n",
        1,
    )
    history = [(a["attempt"], a["runner"], a["status"], a["exit_code"]) for a in record["attempts"]]
    assert history == [(1, "vm-1", "failed", 5), (2, "vm-2", "completed", 0)]
    assert client.runners() == []


async def test_once_ephemeral_canceled_mid_job_exits_without_lingering(launch, client) -> None:
    """The producer cancels: the pod pushes `cancel`, the registration ends (4001); the agent
    stops the job and, its token refused, exits 3 at once instead of retrying for minutes."""
    token = client.add_runner("vm-1", [SPEC], ephemeral=True)
    job_id = client.submit(SPEC, {"command": ["sleep", "60"]})
    proc = await launch("vm-1", token)
    await eventually(lambda: client.get(job_id)["status"] == "running", what="the job running")
    assert client.cancel(job_id) is True
    assert await asyncio.wait_for(proc.wait(), 30) == 3
    assert client.get(job_id)["status"] == "canceled"
    assert client.runners() == []
