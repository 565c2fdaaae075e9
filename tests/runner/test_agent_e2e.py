"""The runner agent end to end: real dispatcher pods (uvicorn in this process), real Redis, real
subprocesses; no mocks, no scripted peer.

Two ways of running the agent:

- in this process (``Agent(config).run(stop)``), for the job outcomes, cancel and re-attach: the
  agent's log is then visible through ``caplog``;
- as a real ``dispatch-runner`` subprocess, for what only a process can show: SIGKILL between a
  finished job and its ack (the spool), SIGTERM (graceful shutdown), what ``ps`` and the log show
  of the token.

A pod "restart" is a graceful stop (channels closed with 1001) followed by a new pod bound to the
same port (``podkit.start_pod_on_port``), since an agent knows one URL. No result writer runs, so
``completed`` is as far as a job gets unless a test runs ``process_result`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import redis

from dispatcher import functions
from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from runner.backoff import Backoff
from runner.config import TOKEN_ENV, AgentConfig
from runner.driver import Agent
from runner.spool import RESULT_FILE
from tests.podkit import RunningPod, add_runner, start_pod, start_pod_on_port
from worker_bridge.tasks import process_result

SPEC = "linux"
RUNNER = "r1"
ACTIVE = frozenset({"pending", "claimed", "running"})
PATH_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


# -- waiting --------------------------------------------------------------------------------------


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``check`` (without blocking the pods' event loop) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(0.03)


async def status_is(
    client: Client, job_id: str, *statuses: str, timeout: float = 10.0
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        record = client.get(job_id)
        return record if record["status"] in statuses else None

    record: dict[str, Any] = await eventually(check, timeout, f"job {job_id} in {statuses}")
    return record


async def final(client: Client, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The job record once it has left pending/claimed/running."""

    def check() -> dict[str, Any] | None:
        record = client.get(job_id)
        return None if record["status"] in ACTIVE else record

    record: dict[str, Any] = await eventually(check, timeout, f"job {job_id} to end")
    return record


def job_events(rclient: redis.Redis, keys: Keys, job_id: str) -> list[dict[str, str]]:
    entries: list[tuple[str, dict[str, str]]] = rclient.xrange(keys.events)  # type: ignore[assignment]
    return [fields for _id, fields in entries if fields.get("job") == job_id]


def event_names(rclient: redis.Redis, keys: Keys, job_id: str) -> list[str]:
    return [e["event"] for e in job_events(rclient, keys, job_id)]


def queued_results(rclient: redis.Redis, keys: Keys) -> list[str]:
    """Outcomes waiting in the results outbox, '<job>:<attempt>' (no result writer runs here)."""
    return [str(i) for i in rclient.zrange(keys.outbox, 0, -1)]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# -- pods and runners -----------------------------------------------------------------------------


@dataclass
class Env:
    """One test's world: pods on one namespace, one registered runner, a producer client."""

    settings: Settings
    keys: Keys
    client: Client
    rclient: redis.Redis
    token: str
    tmp: Path
    pods: list[RunningPod] = field(default_factory=list)

    async def pod(self) -> RunningPod:
        pod = await start_pod(self.settings)
        self.pods.append(pod)
        return pod

    async def restartable_pod(self, port: int = 0) -> RunningPod:
        """A pod that a later one can replace on the same port (``port``: that of the old one)."""
        pod = await start_pod_on_port(self.settings, port)
        self.pods.append(pod)
        return pod

    def submit(self, payload: dict[str, Any], *, timeout: float = 30, max_attempts: int = 1) -> str:
        return self.client.submit(SPEC, payload, timeout=timeout, max_attempts=max_attempts)

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    @property
    def spool_result(self) -> Path:
        return self.state_dir / RUNNER / RESULT_FILE


@pytest.fixture
async def env(
    settings: Settings, keys: Keys, rclient: redis.Redis, tmp_path: Path
) -> AsyncIterator[Env]:
    client = Client(settings)
    world = Env(settings, keys, client, rclient, add_runner(settings, RUNNER, [SPEC]), tmp_path)
    try:
        yield world
    finally:
        client.close()
        outcomes = await asyncio.gather(*(p.stop() for p in world.pods), return_exceptions=True)
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes


@contextlib.asynccontextmanager
async def agent_running(env: Env, pod: RunningPod, **options: Any) -> AsyncIterator[Agent]:
    """An in-process agent for the whole block; it must shut down cleanly (status 0) at the end."""
    settings: dict[str, Any] = {"open_timeout": 2.0, "kill_grace": 0.5, **options}
    config = AgentConfig(
        urls=(pod.url,),
        runner=RUNNER,
        token=env.token,
        state_dir=env.state_dir,
        base_env=PATH_ENV,
        **settings,
    )
    agent = Agent(config, backoff=Backoff(base=0.1, cap=0.5))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        code = await asyncio.wait_for(task, 15)
    assert code == 0


def _runner_command() -> list[str]:
    script = Path(sys.executable).with_name("dispatch-runner")
    return [str(script)] if script.exists() else [sys.executable, "-m", "runner"]


@dataclass
class RunnerProcess:
    """A ``dispatch-runner`` subprocess; its stdout and stderr go to ``log_path``."""

    proc: asyncio.subprocess.Process
    log_path: Path
    _log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def logged(self, text: str, timeout: float = 30.0) -> None:
        """Wait for ``text`` in the log; a timeout names the process's state and its log's tail."""
        try:
            await eventually(lambda: text in self.log(), timeout, f"{text!r} in the runner's log")
        except AssertionError as exc:
            tail = "\n".join(self.log().splitlines()[-20:])
            state = f"exit code {self.proc.returncode}"
            raise AssertionError(f"{exc}; {state}; log tail:\n{tail}") from None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def exit_code(self, timeout: float = 10.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        self._log.close()
        return code


Launch = Callable[..., Awaitable[RunnerProcess]]


@pytest.fixture
async def launch_runner(env: Env) -> AsyncIterator[Launch]:
    """Start ``dispatch-runner`` subprocesses; any still alive at the end are killed (by pid)."""
    started: list[RunnerProcess] = []

    async def launch(pod: RunningPod, *extra: str, token_in_argv: bool = False) -> RunnerProcess:
        log_path = env.tmp / f"runner-{len(started)}.log"
        log_file = log_path.open("wb")
        environ = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        argv = [
            *_runner_command(),
            "--url",
            pod.url,
            "--runner",
            RUNNER,
            "--state-dir",
            str(env.state_dir),
            "--kill-grace",
            "0.5",
            *extra,
        ]
        if token_in_argv:
            argv += ["--token", env.token]
        else:
            environ[TOKEN_ENV] = env.token
        proc = await asyncio.create_subprocess_exec(
            *argv, env=environ, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )
        runner = RunnerProcess(proc, log_path, log_file)
        started.append(runner)
        return runner

    yield launch
    for runner in started:
        if runner.proc.returncode is None:
            runner.proc.kill()
            await runner.proc.wait()
        runner._log.close()
        # Rule for every test that runs the command: the token never reaches its output.
        assert env.token not in runner.log(), f"token printed in {runner.log_path}"


@pytest.fixture
def agent_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="runner")
    yield caplog


# -- 1, 2: job outcomes -------------------------------------------------------------------------


async def test_a_job_runs_and_its_output_is_recorded_then_processed(
    env: Env, agent_log: pytest.LogCaptureFixture
) -> None:
    pod = await env.pod()
    async with agent_running(env, pod):
        job_id = env.submit({"command": ["sh", "-c", "echo hi; echo err >&2"]})
        record = await final(env.client, job_id)
        assert (record["status"], record["exit_code"], record["error"]) == ("completed", 0, None)
        assert (record["stdout"], record["stderr"]) == ("hi\n", "err\n")
        assert (record["runner"], record["attempt"]) == (RUNNER, 1)
        # in the results outbox for the result writers, once
        assert queued_results(env.rclient, env.keys) == [f"{job_id}:1"]
        # the result writer's task, run here, takes it to `processed`
        with redis.Redis.from_url(env.settings.redis_url) as conn:
            assert process_result(env.settings.namespace, job_id, 1, connection=conn) == "processed"
        assert env.client.wait(job_id, timeout=5)["status"] == "processed"
        assert event_names(env.rclient, env.keys, job_id) == [
            "submitted",
            "claimed",
            "running",
            "completed",
            "processed",
        ]
        # the agent asked for the next job: the runner is idle in a long poll again
        await eventually(lambda: env.rclient.hget(env.keys.runner(RUNNER), "state") == "idle")
    assert not env.spool_result.exists()
    assert env.token not in agent_log.text


@pytest.mark.parametrize(
    ("payload", "status", "exit_code", "error", "stdout"),
    [
        (
            {"command": ["sh", "-c", "echo partial; exit 3"]},
            "failed",
            3,
            "exit code 3",
            "partial\n",
        ),
        (
            {"script": 'echo "$((6 * 7)) in $(basename "$PWD")"', "cwd": "sub/dir"},
            "completed",
            0,
            None,
            "42 in dir\n",
        ),
        ({"script": "exit 0", "outputs": ["missing.txt"]}, "completed", 0, None, ""),
        ({"command": ["/nonexistent/binary"]}, "failed", None, None, None),
        ({"neither": True}, "failed", None, None, None),
    ],
    ids=["exit-code", "script-cwd", "outputs", "cannot-start", "bad-payload"],
)
async def test_job_outcomes(
    env: Env,
    payload: dict[str, Any],
    status: str,
    exit_code: int | None,
    error: str | None,
    stdout: str | None,
) -> None:
    pod = await env.pod()
    async with agent_running(env, pod):
        job_id = env.submit(payload)
        record = await final(env.client, job_id)
    assert (record["status"], record["exit_code"], record["stdout"]) == (status, exit_code, stdout)
    if error is not None or status == "completed":
        assert record["error"] == error
    else:
        assert record["error"]  # a message for the producer (cannot start / bad payload)
    if "outputs" in payload:
        assert record["results"] == {"missing.txt": None}


async def test_a_job_over_its_timeout_is_killed_and_reported_failed(
    env: Env, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    pod = await env.pod()
    async with agent_running(env, pod):
        started = time.monotonic()
        # the background child ignores SIGTERM: only the SIGKILL after the grace period stops it
        job_id = env.submit(
            {"script": f"(trap '' TERM; exec sleep 30) & echo $! > {pid_file}; echo begun; wait"},
            timeout=1,
        )
        record = await final(env.client, job_id)
        elapsed = time.monotonic() - started
    # the executor stops the job at its timeout (1 s), long before the dispatcher's own deadline
    # (timeout + DISPATCHER_TIMEOUT_GRACE): SIGTERM to the process group, SIGKILL 0.5 s later
    assert (record["status"], record["error"]) == ("failed", "timeout")
    assert record["exit_code"] == -signal.SIGTERM  # the shell died of the SIGTERM
    assert record["stdout"] == "begun\n"
    assert 1.0 <= elapsed < 10.0  # the dispatcher's own deadline would be 61 s
    await eventually(lambda: not alive(int(pid_file.read_text())), 3, "the job's child to die")


async def test_heartbeats_keep_a_job_longer_than_the_lease_alive(
    settings: Settings, env: Env
) -> None:
    env.settings = dataclasses.replace(settings, lease_timeout=1.0, heartbeat_interval=0.25)
    pod = await env.pod()
    async with agent_running(env, pod):
        job_id = env.submit({"script": "sleep 2.5; echo survived"})
        record = await final(env.client, job_id)
    assert (record["status"], record["attempt"], record["stdout"]) == ("completed", 1, "survived\n")
    assert "lease_expired" not in event_names(env.rclient, env.keys, job_id)


# -- 3: producer cancel ---------------------------------------------------------------------------


async def test_a_producer_cancel_kills_the_job_and_the_agent_takes_the_next(
    env: Env, tmp_path: Path, agent_log: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "child.pid"
    pod = await env.pod()
    async with agent_running(env, pod):
        job_id = env.submit(
            {"script": f"(trap '' TERM; exec sleep 30) & echo $! > {pid_file}; wait"}
        )
        await status_is(env.client, job_id, "running")
        child = int(await eventually(lambda: pid_file.exists() and pid_file.read_text().strip()))
        assert alive(child)

        assert env.client.cancel(job_id) is True
        assert env.client.get(job_id)["status"] == "canceled"  # at once, by the producer's call
        # the pod pushes `cancel`; the agent kills the whole group (SIGKILL after 0.5 s for the
        # child that ignores SIGTERM) and answers `canceled`, which the pod acknowledges
        await eventually(lambda: not alive(child), 5, "the job's process group to be killed")
        await eventually(lambda: f"result of job {job_id} acknowledged" in agent_log.text, 5)
        assert f"dispatcher canceled job {job_id} (canceled)" in agent_log.text
        assert f"job {job_id} finished: canceled" in agent_log.text

        record = env.client.get(job_id)
        assert (record["status"], record["error"]) == ("canceled", "canceled")
        assert event_names(env.rclient, env.keys, job_id).count("canceled") == 1

        second = env.submit({"command": ["echo", "next"]})
        record = await final(env.client, second)
        assert (record["status"], record["stdout"], record["runner"]) == (
            "completed",
            "next\n",
            RUNNER,
        )
    assert not env.spool_result.exists()


# -- 4: re-attach after a pod restart ------------------------------------------------------------


async def test_the_agent_reattaches_to_its_job_through_a_restarted_pod(
    env: Env, agent_log: pytest.LogCaptureFixture
) -> None:
    first = await env.restartable_pod()
    async with agent_running(env, first):
        job_id = env.submit({"script": "sleep 2.5; echo done"})
        await status_is(env.client, job_id, "running")

        await first.stop()  # graceful: the channel is closed with 1001, the job keeps its lease
        await eventually(lambda: "connection lost (close code 1001" in agent_log.text, 5)
        await eventually(lambda: "cannot connect to the dispatcher" in agent_log.text, 5)
        assert env.client.get(job_id)["status"] == "running"

        second = await env.restartable_pod(first.port)  # the agent's URL now reaches the new pod
        # the agent reconnects (back-off) and re-attaches with `running`, not `ready`
        await eventually(
            lambda: env.rclient.hget(env.keys.runner(RUNNER), "pod") == second.id,
            5,
            "the runner to be attached to the new pod",
        )
        runner = env.rclient.hgetall(env.keys.runner(RUNNER))
        assert (runner["job"], runner["state"]) == (job_id, "busy")

        record = await final(env.client, job_id)
        assert (record["status"], record["attempt"], record["stdout"]) == ("completed", 1, "done\n")
        await eventually(lambda: f"result of job {job_id} acknowledged" in agent_log.text, 5)
    names = event_names(env.rclient, env.keys, job_id)
    assert names == ["submitted", "claimed", "running", "completed"], names
    assert queued_results(env.rclient, env.keys) == [f"{job_id}:1"]


async def test_a_cancel_made_while_the_agent_was_away_reaches_it_when_it_reattaches(
    env: Env, tmp_path: Path, agent_log: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "child.pid"
    first = await env.restartable_pod()
    async with agent_running(env, first):
        job_id = env.submit({"script": f"sleep 30 & echo $! > {pid_file}; wait"})
        await status_is(env.client, job_id, "running")
        child = int(await eventually(lambda: pid_file.exists() and pid_file.read_text().strip()))
        await first.stop()
        assert env.client.cancel(job_id) is True  # no pod holds the runner: nothing is pushed
        assert alive(child)

        await env.restartable_pod(first.port)
        # `running` (re-attach) is answered `cancel`: the agent stops the job, sends `canceled`
        await eventually(lambda: not alive(child), 5, "the job's process group to be killed")
        await eventually(lambda: f"result of job {job_id} acknowledged" in agent_log.text, 5)
        assert env.client.get(job_id)["status"] == "canceled"
        assert event_names(env.rclient, env.keys, job_id).count("canceled") == 1

        second = env.submit({"command": ["echo", "next"]})
        assert (await final(env.client, second))["status"] == "completed"


async def test_a_result_that_arrives_after_the_lease_expired_still_counts(
    settings: Settings, env: Env, agent_log: pytest.LogCaptureFixture
) -> None:
    """Rule 4: a runner's `completed` replaces a `failed` recorded only because the lease ran out
    (here: the agent's pod is down longer than the lease while another pod reaps it)."""
    env.settings = dataclasses.replace(settings, lease_timeout=0.5, heartbeat_interval=0.2)
    first = await env.restartable_pod()
    await env.pod()  # another pod of the namespace, on a port the agent does not know: it reaps
    async with agent_running(env, first):
        job_id = env.submit({"script": "sleep 1.5; echo late"})
        await status_is(env.client, job_id, "running")
        await first.stop()
        record = await status_is(env.client, job_id, "failed", timeout=5)
        assert record["error"] == "lease expired"
        await eventually(lambda: f"job {job_id} finished: completed" in agent_log.text, 5)

        await env.restartable_pod(first.port)
        await eventually(lambda: f"result of job {job_id} acknowledged" in agent_log.text, 5)
        record = env.client.get(job_id)
        assert (record["status"], record["error"], record["stdout"]) == (
            "completed",
            None,
            "late\n",
        )
    names = event_names(env.rclient, env.keys, job_id)
    assert names[-3:] == ["lease_expired", "failed", "completed"], names


async def test_the_agent_asks_again_after_no_job(env: Env) -> None:
    pod = await env.pod()
    runner_key = env.keys.runner(RUNNER)
    async with agent_running(env, pod, poll_timeout=1):
        await eventually(lambda: env.rclient.hget(runner_key, "state") == "idle")
        # the first long poll ends with `no_job` after 1 s and the agent sends `ready` again,
        # still on the same connection (that `ready` costs no Redis call while the runner
        # lingers in the idle sets, so there is nothing to read back: the job is the proof)
        await asyncio.sleep(1.5)
        assert env.rclient.hget(runner_key, "conn") == "1"
        job_id = env.submit({"command": ["echo", "polled"]})
        record = await final(env.client, job_id, timeout=10)
    assert (record["status"], record["stdout"]) == ("completed", "polled\n")


async def test_a_revoked_token_closes_the_channel_and_the_agent_gives_up(
    env: Env, agent_log: pytest.LogCaptureFixture
) -> None:
    pod = await env.pod()
    config = AgentConfig(
        urls=(pod.url,),
        runner=RUNNER,
        token=env.token,
        state_dir=env.state_dir,
        base_env=PATH_ENV,
        open_timeout=2.0,
        max_auth_failures=3,
    )
    task = asyncio.create_task(Agent(config, backoff=Backoff(base=0.05, cap=0.1)).run())
    await eventually(lambda: env.rclient.hget(env.keys.runner(RUNNER), "state") == "idle")
    with redis.Redis.from_url(env.settings.redis_url) as conn:
        functions.run_sync(conn, functions.runner_revoke(env.keys, RUNNER))
    assert await asyncio.wait_for(task, 10) == 3  # documented: repeated token refusals
    assert "connection lost (close code 4001" in agent_log.text
    assert agent_log.text.count("token refused by the dispatcher (HTTP 401 at ") == 3
    assert env.token not in agent_log.text


# -- 5: the spool: killed between the job's end and the ack -------------------------------------


async def test_a_result_held_in_the_spool_arrives_once_after_a_kill(
    env: Env, launch_runner: Launch
) -> None:
    first = await env.restartable_pod()
    runner = await launch_runner(first, "--poll-timeout", "5")
    job_id = env.submit({"script": "sleep 1.5; echo done"})
    await status_is(env.client, job_id, "running")

    await first.stop()  # no pod: the result cannot be acknowledged
    await runner.logged(f"job {job_id} finished: completed")
    await eventually(env.spool_result.exists, 5, "the result in the spool")
    runner.signal(signal.SIGKILL)
    assert await runner.exit_code() == -signal.SIGKILL

    held = json.loads(env.spool_result.read_bytes())
    assert (held["event"], held["job"], held["attempt"], held["stdout"]) == (
        "completed",
        job_id,
        1,
        "done\n",
    )
    assert env.client.get(job_id)["status"] == "running"  # nothing reached the dispatcher

    second = await env.restartable_pod(first.port)
    restarted = await launch_runner(second, "--poll-timeout", "5")
    await restarted.logged(f"the unacknowledged result of job {job_id} will be sent first")
    await restarted.logged(f"result of job {job_id} acknowledged")
    record = env.client.get(job_id)
    assert (record["status"], record["exit_code"], record["stdout"]) == ("completed", 0, "done\n")
    assert not env.spool_result.exists()
    result_id = f"{job_id}:1"
    assert event_names(env.rclient, env.keys, job_id).count("completed") == 1
    assert queued_results(env.rclient, env.keys) == [result_id]

    # The same result delivered again (the ack lost on the way back) records nothing new.
    restarted.signal(signal.SIGTERM)
    assert await restarted.exit_code() == 0
    env.spool_result.write_text(json.dumps(held))
    again = await launch_runner(second, "--poll-timeout", "5")
    await again.logged(f"result of job {job_id} acknowledged")
    assert env.client.get(job_id) == record
    assert event_names(env.rclient, env.keys, job_id).count("completed") == 1
    assert queued_results(env.rclient, env.keys) == [result_id]
    assert not env.spool_result.exists()
    again.signal(signal.SIGTERM)
    assert await again.exit_code() == 0


# -- 6: graceful shutdown -------------------------------------------------------------------------


async def test_sigterm_lets_the_job_finish_delivers_it_and_exits_zero(
    env: Env, launch_runner: Launch
) -> None:
    pod = await env.pod()
    runner = await launch_runner(pod, "--poll-timeout", "5")
    job_id = env.submit({"script": "sleep 1.5; echo finished"})
    await status_is(env.client, job_id, "running")

    signaled = time.monotonic()
    runner.signal(signal.SIGTERM)
    await runner.logged("shutdown requested")
    later = env.submit({"command": ["true"]})  # submitted while draining: not taken
    assert await runner.exit_code(timeout=10) == 0
    assert time.monotonic() - signaled >= 1.0  # it waited for the job

    record = env.client.get(job_id)
    assert (record["status"], record["stdout"]) == ("completed", "finished\n")
    assert not env.spool_result.exists()
    await asyncio.sleep(0.3)
    assert env.client.get(later)["status"] == "pending"
    await eventually(lambda: env.rclient.hget(env.keys.runner(RUNNER), "state") == "offline", 3)


async def test_a_second_sigterm_exits_at_once_and_the_job_is_retried(
    env: Env, launch_runner: Launch, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    pod = await env.pod()
    runner = await launch_runner(pod, "--poll-timeout", "5", "--drain-timeout", "60")
    script = (
        f'if [ "$DISPATCH_JOB_ATTEMPT" = 1 ]; then sleep 30 & echo $! > {pid_file}; wait; '
        'fi; echo "attempt $DISPATCH_JOB_ATTEMPT"'
    )
    job_id = env.submit({"script": script}, max_attempts=2)
    await status_is(env.client, job_id, "running")
    child = int(await eventually(lambda: pid_file.exists() and pid_file.read_text().strip()))

    runner.signal(signal.SIGTERM)
    await runner.logged("shutdown requested")
    signaled = time.monotonic()
    runner.signal(signal.SIGTERM)
    assert await runner.exit_code(timeout=15) == 1  # forced: documented exit status 1
    assert time.monotonic() - signaled < 10  # not the 60 s drain
    await eventually(lambda: not alive(child), 3, "the job's process group to be killed")
    assert env.client.get(job_id)["status"] == "running"  # the lease still holds the attempt

    # Restarted, the agent reports the lost job and sends `ready`: the dispatcher ends attempt 1
    # at once (rule 1) and, as max_attempts allows, hands the job out again.
    restarted = await launch_runner(pod, "--poll-timeout", "5")
    await restarted.logged(f"job {job_id} attempt 1 was running when the agent stopped")
    record = await final(env.client, job_id)
    assert (record["status"], record["attempt"], record["stdout"]) == (
        "completed",
        2,
        "attempt 2\n",
    )
    assert "lease_expired" in event_names(env.rclient, env.keys, job_id)
    restarted.signal(signal.SIGTERM)
    assert await restarted.exit_code() == 0


async def test_a_draining_agent_delivers_its_result_through_a_pod_restart(
    env: Env, agent_log: pytest.LogCaptureFixture
) -> None:
    """SIGTERM on the runner host during a rolling pod restart: the job finishes while the agent's
    pod is down; a pod is back on the URL 0.5 s later, well within the drain timeout."""
    first = await env.restartable_pod()
    config = AgentConfig(
        urls=(first.url,),
        runner=RUNNER,
        token=env.token,
        state_dir=env.state_dir,
        base_env=PATH_ENV,
        open_timeout=2.0,
        drain_timeout=30,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(Agent(config, backoff=Backoff(base=0.1, cap=0.3)).run(stop))
    job_id = env.submit({"script": "sleep 0.8; echo drained"})
    await status_is(env.client, job_id, "running")
    stop.set()  # what SIGTERM does
    await first.stop()
    await eventually(lambda: f"job {job_id} finished: completed" in agent_log.text, 5)
    await asyncio.sleep(0.5)
    await env.restartable_pod(first.port)
    try:
        assert await asyncio.wait_for(task, 10) == 0
        record = env.client.get(job_id)
        assert (record["status"], record["stdout"]) == ("completed", "drained\n")
        assert not env.spool_result.exists()
    finally:
        if not task.done():
            stop.set()
            task.cancel()


# -- 7: the token stays secret --------------------------------------------------------------------


@pytest.mark.parametrize("in_argv", [True, False], ids=["--token", "env"])
async def test_the_token_is_not_shown_in_ps_the_log_or_the_jobs_environment(
    env: Env, launch_runner: Launch, in_argv: bool
) -> None:
    pod = await env.pod()
    runner = await launch_runner(
        pod, "--poll-timeout", "5", "--log-format", "json", token_in_argv=in_argv
    )
    await runner.logged("connected to")
    cmdline = Path(f"/proc/{runner.pid}/cmdline").read_bytes()
    assert env.token.encode() not in cmdline
    assert (b"--token" in cmdline) is in_argv  # the argument is there, its value overwritten

    job_id = env.submit({"script": 'env; echo "[$DISPATCH_RUNNER_TOKEN]"'})
    record = await final(env.client, job_id)
    assert record["status"] == "completed"
    assert env.token not in record["stdout"] and "[]\n" in record["stdout"]

    runner.signal(signal.SIGTERM)
    assert await runner.exit_code() == 0
    lines = [json.loads(line) for line in runner.log().splitlines() if line.strip()]
    warned = any("--token" in line["message"] for line in lines)  # the value is not in it
    assert warned is in_argv
    assert env.token not in runner.log()
