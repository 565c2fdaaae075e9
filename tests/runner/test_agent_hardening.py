"""The runner agent's hardening, with real ``dispatch-runner`` processes against an in-process pod:
no job process outlives its agent (``kill -9``, SIGTERM/SIGINT), and a job cannot read the token.

Every wait is on a file, a log line or a job record, with generous bounds; no sleep decides an
outcome. Agents are killed by pid at the end of each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from runner.config import TOKEN_ENV
from runner.results import DRAIN_TIMEOUT_ERROR
from runner.spool import CURRENT_FILE
from tests.podkit import RunningPod, add_runner, start_pod
from tests.runner.test_agent_e2e import RunnerProcess, alive, event_names, eventually, final

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
SPEC = "linux"


def _runner_command() -> list[str]:
    script = Path(sys.executable).with_name("dispatch-runner")
    return [str(script)] if script.exists() else [sys.executable, "-m", "runner"]


def pid_in(path: Path) -> Callable[[], int | None]:
    """A check for ``eventually``: the pid a job wrote to ``path``, once it is complete."""

    def check() -> int | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            text = path.read_text()
            if text.endswith("\n"):
                return int(text)
        return None

    return check


@dataclass
class World:
    settings: Settings
    keys: Keys
    client: Client
    rclient: redis.Redis
    base: Path  # private to the test's user, or passable by others (the job user test)
    tokens: dict[str, str] = field(default_factory=dict)
    agents: list[RunnerProcess] = field(default_factory=list)

    def runner(self, name: str) -> str:
        self.tokens[name] = add_runner(self.settings, name, [SPEC])
        return name

    def submit(self, payload: dict[str, Any], max_attempts: int = 1) -> str:
        return self.client.submit(SPEC, payload, timeout=60, max_attempts=max_attempts)

    async def launch(
        self, pod: RunningPod, name: str, *extra: str, token_in_argv: bool = False
    ) -> RunnerProcess:
        log_path = self.base / f"{name}-{len(self.agents)}.log"
        log_file = log_path.open("wb")
        environ = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        argv = [*_runner_command(), "--url", pod.url, "--runner", name, "--kill-grace", "0.5"]
        argv += ["--state-dir", str(self.base / "state"), "--poll-timeout", "5", *extra]
        if token_in_argv:
            argv += ["--token", self.tokens[name]]
        else:
            environ[TOKEN_ENV] = self.tokens[name]
        proc = await asyncio.create_subprocess_exec(
            *argv, env=environ, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )
        agent = RunnerProcess(proc, log_path, log_file)
        self.agents.append(agent)
        return agent


@contextlib.asynccontextmanager
async def world_in(
    settings: Settings, keys: Keys, rclient: redis.Redis, base: Path
) -> AsyncIterator[World]:
    """A world whose agents are killed (by pid) at the end; their logs never show a token."""
    client = Client(settings)
    world = World(settings, keys, client, rclient, base)
    try:
        yield world
    finally:
        client.close()
        for agent in world.agents:
            if agent.proc.returncode is None:
                agent.proc.kill()
                await agent.proc.wait()
            agent._log.close()
        for agent in world.agents:
            for token in world.tokens.values():
                assert token not in agent.log(), f"token printed in {agent.log_path}"


@pytest.fixture
async def world(
    settings: Settings, keys: Keys, rclient: redis.Redis, tmp_path: Path
) -> AsyncIterator[World]:
    async with world_in(settings, keys, rclient, tmp_path) as w:
        yield w


@pytest.fixture
async def pod(settings: Settings) -> AsyncIterator[RunningPod]:
    running = await start_pod(settings)
    try:
        yield running
    finally:
        await running.stop()


# -- kill -9 of an agent mid-job ------------------------------------------------------------------

# Attempt 1 writes its shell's pid and a background child's pid, then sleeps. Attempt 2 (after the
# restart) says whether either of those processes still exists: it runs only once the restarted
# agent takes a job, so it proves they were gone by then.
PROBE_OLD = (
    'gone() { s=$(cut -d")" -f2 "/proc/$1/stat" 2>/dev/null | cut -d" " -f2); '
    '[ -z "$s" ] || [ "$s" = Z ]; }; '
    'if [ "$DISPATCH_JOB_ATTEMPT" = 1 ]; then '
    "sleep 60 & echo $! > CHILD; echo $$ > LEADER; wait; "
    "else for p in $(cat LEADER) $(cat CHILD); do "
    'if gone "$p"; then echo "$p gone"; else echo "$p alive"; fi; done; fi'
)


async def test_a_restarted_agent_kills_the_job_its_previous_life_left_before_taking_another(
    world: World, pod: RunningPod
) -> None:
    leader_file, child_file = world.base / "leader.pid", world.base / "child.pid"
    work = world.base / "work"  # shared by two agents
    r1, r2 = world.runner("r1"), world.runner("r2")
    first = await world.launch(pod, r1, "--work-dir", str(work))
    await first.logged("connected to")
    job_id = world.submit(
        {"script": PROBE_OLD.replace("LEADER", str(leader_file)).replace("CHILD", str(child_file))},
        max_attempts=2,
    )
    leader = await eventually(pid_in(leader_file), 10, "attempt 1 to start")
    child = await eventually(pid_in(child_file), 10, "attempt 1's child")

    # Another agent in the same --work-dir runs a job that waits for a file.
    other = await world.launch(
        pod, r2, "--work-dir", str(work), "--state-dir", str(world.base / "s2")
    )
    release, other_dir_file = world.base / "release", world.base / "other-work"
    other_id = world.submit(
        {
            "script": f'echo "$DISPATCH_WORK_DIR" > {other_dir_file}.tmp; '
            f"mv {other_dir_file}.tmp {other_dir_file}; "
            f"while [ ! -e {release} ]; do sleep 0.05; done; echo released"
        }
    )
    other_dir = Path(
        await eventually(lambda: other_dir_file.exists() and other_dir_file.read_text().strip())
    )
    assert other_dir.is_dir()

    first.signal(signal.SIGKILL)
    assert await first.exit_code() == -signal.SIGKILL
    assert alive(leader) and alive(child)  # what the issue saw: the job outlives its agent
    assert (world.base / "state" / r1 / CURRENT_FILE).exists()

    restarted = await world.launch(pod, r1, "--work-dir", str(work))
    await restarted.logged(f"of job {job_id} attempt 1, left by the previous agent")
    await restarted.logged("connected to")
    log = restarted.log()
    killed_line = next(line for line in log.splitlines() if "killed processes" in line)
    assert f" {leader}" in killed_line.replace("[", " ") and f" {child}" in killed_line
    assert log.index("killed processes") < log.index("was running when the agent stopped")
    assert log.index("was running when the agent stopped") < log.index("connected to")
    assert not alive(leader) and not alive(child)

    # The dispatcher ends attempt 1 on the restarted agent's `ready` (rule 1: lease_expired, the
    # honest record of a lost attempt) and hands out attempt 2, which finds nothing of attempt 1.
    record = await final(world.client, job_id, timeout=15)
    assert (record["status"], record["attempt"], record["runner"]) == ("completed", 2, r1)
    assert record["stdout"] == f"{leader} gone\n{child} gone\n"
    names = event_names(world.rclient, world.keys, job_id)
    assert names.count("lease_expired") == 1 and names.count("running") == 2, names

    # The other agent's live job kept its work directory through r1's restart.
    assert other_dir.is_dir() and world.client.get(other_id)["status"] == "running"
    release.touch()
    record = await final(world.client, other_id, timeout=15)
    assert (record["status"], record["stdout"]) == ("completed", "released\n")
    for agent in (restarted, other):
        agent.signal(signal.SIGTERM)
        assert await agent.exit_code() == 0


# -- SIGTERM / SIGINT ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_the_job_and_its_whole_group_at_the_drain_timeout(
    world: World, pod: RunningPod, sig: signal.Signals
) -> None:
    child_file, leader_file = world.base / "child.pid", world.base / "leader.pid"
    r1 = world.runner("r1")
    agent = await world.launch(pod, r1, "--drain-timeout", "0.5")
    await agent.logged("connected to")
    # the background child ignores SIGTERM: only the group's SIGKILL ends it
    job_id = world.submit(
        {
            "script": f"(trap '' TERM; exec sleep 60) & echo $! > {child_file}; "
            f"echo $$ > {leader_file}; exec sleep 60"
        }
    )
    child = await eventually(pid_in(child_file), 10, "the job's child")
    leader = await eventually(pid_in(leader_file), 10, "the job's leader")

    agent.signal(sig)
    assert await agent.exit_code(timeout=15) == 0  # drained: the result was delivered
    assert not alive(leader) and not alive(child)
    record = world.client.get(job_id)
    assert (record["status"], record["error"]) == ("failed", DRAIN_TIMEOUT_ERROR)
    assert not (world.base / "state" / r1 / CURRENT_FILE).exists()


# -- the token ------------------------------------------------------------------------------------


def _nobody_available() -> bool:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return False
    return os.geteuid() == 0


@pytest.fixture
async def shared_world(
    settings: Settings, keys: Keys, rclient: redis.Redis
) -> AsyncIterator[World]:
    """A world in a directory other users may pass through (tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="dispatch-runner-test-"))
    base.chmod(0o711)
    try:
        async with world_in(settings, keys, rclient, base) as w:
            yield w
    finally:
        shutil.rmtree(base, ignore_errors=True)


# Each way a job might find the token; everything it reads goes to its stdout.
TOKEN_PROBE = """
echo "ppid $PPID uid $(id -u)"
echo "== env"; env
for f in environ cmdline mem maps; do
  echo "== $f"; cat /proc/$PPID/$f 2>&1 | tr '\\0' ' '; echo
done
echo "== task environ"; cat /proc/$PPID/task/*/environ 2>&1 | tr '\\0' ' '
echo "== fds"; ls -l /proc/$PPID/fd 2>&1
echo "== state"; ls -la STATE STATE/r1 2>&1; cat STATE/r1/* 2>&1
echo "== log"; cat LOG 2>&1
echo "== end"
"""


@pytest.mark.skipif(not _nobody_available(), reason="needs root and a user 'nobody'")
@pytest.mark.parametrize("in_argv", [True, False], ids=["--token", "env"])
async def test_a_job_run_as_another_user_finds_the_token_nowhere(
    shared_world: World, pod: RunningPod, in_argv: bool
) -> None:
    world = shared_world
    r1 = world.runner("r1")
    token = world.tokens[r1]
    work = world.base / "work"
    agent = await world.launch(
        pod, r1, "--job-user", "nobody", "--work-dir", str(work), token_in_argv=in_argv
    )
    await agent.logged("connected to")
    # what root itself sees of the agent: the token overwritten in environ and cmdline
    for name in ("environ", "cmdline"):
        assert token.encode() not in Path(f"/proc/{agent.pid}/{name}").read_bytes(), name

    state = world.base / "state"
    script = TOKEN_PROBE.replace("STATE", str(state)).replace("LOG", str(agent.log_path))
    job_id = world.submit({"script": script})
    record = await final(world.client, job_id, timeout=15)
    out = record["stdout"]
    assert record["status"] == "completed", record
    assert token not in out, out  # the point: nothing the job could read holds the token
    sections = dict(part.split("\n", 1) for part in out.split("== ")[1:])
    assert out.startswith(f"ppid {agent.pid} uid {pwd.getpwnam('nobody').pw_uid}\n")
    assert TOKEN_ENV not in sections["env"] and "HOME=" in sections["env"]
    for denied in ("environ", "mem", "maps", "task environ", "fds", "state"):
        assert "Permission denied" in sections[denied], (denied, sections[denied])
    assert "--url" in sections["cmdline"]  # readable by anyone, and scrubbed
    assert "connected to" in sections["log"]  # readable here (0644), and scrubbed
    assert "end" in sections

    # the state directory is private and holds no token
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / r1).stat().st_mode) == 0o700
    for path in (state / r1).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert token.encode() not in path.read_bytes(), path
    agent.signal(signal.SIGTERM)
    assert await agent.exit_code() == 0
