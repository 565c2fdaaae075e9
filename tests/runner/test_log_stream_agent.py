"""The reference agent streams its job's output live (protocol 1.1 `log`) through a real pod into
Redis, and still sends the capped tails in the terminal message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.podkit import add_runner
from tests.runner.test_agent_e2e import RUNNER, SPEC, Env, agent_running, eventually, final


@pytest.fixture
async def world(
    settings: Settings, keys: Keys, rclient: redis.Redis, tmp_path: Path
) -> AsyncIterator[Env]:
    """As test_agent_e2e's ``env``: pods on one namespace, one runner, a producer client."""
    client = Client(settings)
    env = Env(settings, keys, client, rclient, add_runner(settings, RUNNER, [SPEC]), tmp_path)
    try:
        yield env
    finally:
        client.close()
        await asyncio.gather(*(p.stop() for p in env.pods), return_exceptions=True)


def log_text(env: Env, job_id: str, stream: str | None = None) -> str:
    return "".join(c.data for c in env.client.logs(job_id) if stream is None or c.stream == stream)


async def test_output_is_in_the_log_while_the_job_runs_and_in_the_tails_after(
    world: Env, tmp_path: Path
) -> None:
    env = world
    go = tmp_path / "go"
    script = 'echo first; echo warn >&2; while [ ! -e "$GO" ]; do sleep 0.05; done; echo last'
    pod = await env.pod()
    async with agent_running(env, pod):
        job_id = env.submit({"script": script, "env": {"GO": str(go)}})
        await eventually(
            lambda: (
                log_text(env, job_id, "stdout") == "first\n"
                and log_text(env, job_id, "stderr") == "warn\n"
            ),
            10,
            "the first lines in the live log",
        )
        assert env.client.get(job_id)["status"] == "running"  # live: the job still waits
        go.touch()
        record = await final(env.client, job_id)
        assert (record["status"], record["stdout"], record["stderr"]) == (
            "completed",
            "first\nlast\n",
            "warn\n",
        )
        followed = list(env.client.logs(job_id, follow=True))
    assert "".join(c.data for c in followed if c.stream == "stdout") == "first\nlast\n"
    assert [c.seq for c in followed] == sorted({c.seq for c in followed})


async def test_megabytes_of_output_are_all_in_the_log_and_the_tail_is_capped(world: Env) -> None:
    env = world
    size = 3_000_000
    pod = await env.pod()
    async with agent_running(env, pod, output_cap=1 << 16):
        job_id = env.submit({"script": f"head -c {size} /dev/zero | tr '\\0' a"})
        record = await final(env.client, job_id, timeout=30)
        assert record["status"] == "completed"
        assert record["stdout"].endswith("a" * 100) and "bytes cut]" in record["stdout"]
        chunks = list(env.client.logs(job_id))
    assert sum(len(c.data) for c in chunks) == size
    assert all(len(c.data.encode()) <= 16 * 1024 for c in chunks)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
