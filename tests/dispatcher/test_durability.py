"""DISPATCHER_ACK_DURABILITY: no `ack` before the promised durability; a server that cannot keep
the promise is refused at pod start in one line. Real Redis (and a real replica when
redis-server is installed)."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis

from dispatcher.durability import Durability
from dispatcher.errors import ConfigError
from dispatcher.pod import Pod
from dispatcher.settings import Settings
from tests.dispatcher.support import (
    SPEC,
    RClient,
    expect_ack,
    job_rec,
    start_job,
    submit,
    take_job,
)
from tests.podkit import add_runner, connect


@pytest.mark.parametrize("value", ["", "disk", "replicas:0", "replicas:x", "aof:1", "Memory"])
def test_bad_values_are_one_line(value: str) -> None:
    with pytest.raises(ConfigError, match="DISPATCHER_ACK_DURABILITY") as caught:
        Settings.from_env({"DISPATCHER_ACK_DURABILITY": value or " "})
    assert "\n" not in str(caught.value)


def test_values() -> None:
    assert Durability.parse("memory") == Durability("memory")
    assert Durability.parse("replicas:2").command(500) == ("WAIT", 2, 500)
    assert Durability.parse("aof").command(500) == ("WAITAOF", 1, 0, 500)
    assert Durability.parse("replicas:2").satisfied(2) and not Durability("replicas", 2).satisfied(
        1
    )
    assert Durability.parse("aof").satisfied([1, 0]) and not Durability("aof").satisfied([0, 0])


async def test_aof_on_a_server_without_waitaof_or_aof_is_refused_at_start(
    settings: Settings, rclient: RClient
) -> None:
    info = rclient.info("persistence")
    if info.get("aof_enabled") == 1 and rclient.execute_command("COMMAND", "INFO", "WAITAOF")[0]:
        pytest.skip("this Redis can keep the aof promise")
    pod = Pod(dataclasses.replace(settings, ack_durability="aof"))
    try:
        with pytest.raises(ConfigError, match="DISPATCHER_ACK_DURABILITY=aof needs"):
            await pod.start()
    finally:
        await pod.redis.aclose()
        pod._sync_redis.close()


async def test_no_replica_no_ack_the_runner_is_told_to_resend(
    launch, settings, rclient, keys
) -> None:
    if int(rclient.info("replication").get("connected_slaves", 0)) > 0:
        pytest.skip("this Redis has replicas")
    pod = await launch(
        dataclasses.replace(settings, ack_durability="replicas:1", ack_wait_timeout=0.2)
    )
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    await runner.send("completed", job=job_id, attempt=1, exit_code=0)
    code, reason = await runner.closed()
    assert (code, reason) == (1011, "result not yet durable; resend it")
    # recorded (with its outbox entry): a resend is a duplicate that waits again
    assert job_rec(rclient, keys, job_id)["status"] == "completed"
    assert rclient.zrange(keys.outbox, 0, -1) == [f"{job_id}:1"]


@pytest.fixture
def replica(redis_url: str, tmp_path) -> Iterator[None]:
    """A real replica of the test Redis for the duration of a test (needs redis-server)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: no replica to wait for")
    primary = urlsplit(redis_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(tmp_path)]  # the full sync's RDB lands there, not in the checkout
    args += ["--replicaof", primary.hostname or "127.0.0.1", str(primary.port or 6379)]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        with redis.Redis(port=port, decode_responses=True) as client:
            while True:
                try:
                    if client.info("replication").get("master_link_status") == "up":
                        break
                except redis.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "the replica did not sync in 20 s"
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


async def test_with_a_replica_the_ack_comes_once_it_holds_the_result(
    replica, launch, settings, rclient, keys
) -> None:
    pod = await launch(dataclasses.replace(settings, ack_durability="replicas:1"))
    runner = await connect(pod, "r1", add_runner(settings, "r1", [SPEC]))
    job_id = submit(rclient, keys)
    job = await take_job(runner)
    await start_job(runner, job)
    await runner.send("completed", job=job_id, attempt=1, exit_code=0)
    await expect_ack(runner, job_id, "completed")
