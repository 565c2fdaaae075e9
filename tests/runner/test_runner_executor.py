"""The subprocess executor, with real processes: exit codes, timeout, cancel, caps, files."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from dispatch_protocol.messages import Job
from runner.events import JobOutcome
from runner.executor import Executor, ExecutorConfig, TailBuffer

J1 = "11111111-1111-4111-8111-111111111111"
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def job(payload: Any, timeout: float = 30.0) -> Job:
    return Job(
        job=J1,
        attempt=2,
        spec="linux",
        payload=payload,
        timeout=timeout,
        heartbeat_interval=5.0,
        created="2025-01-01T00:00:00Z",
    )


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path / "work"


def executor(work: Path, **options: Any) -> Executor:
    options.setdefault("kill_grace", 0.5)
    options.setdefault("base_env", {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    return Executor(ExecutorConfig(work_dir=work, **options))


async def run(work: Path, payload: Any, timeout: float = 30.0, **options: Any) -> JobOutcome:
    return await executor(work, **options).run(job(payload, timeout), asyncio.Event())


def alive(pid: int) -> bool:
    """A zombie counts as dead: it has stopped running, only its parent has not reaped it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def wait_dead(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return not alive(pid)


async def test_command_that_succeeds_is_completed(work: Path) -> None:
    outcome = await run(work, {"command": ["echo", "hello"]})
    assert outcome == JobOutcome(exit_code=0, error=None, stdout="hello\n", stderr="")


async def test_nonzero_exit_is_failed_with_that_code(work: Path) -> None:
    outcome = await run(work, {"script": "echo oops >&2; exit 3"})
    assert (outcome.exit_code, outcome.error, outcome.stderr) == (3, "exit code 3", "oops\n")


async def test_death_by_signal_is_named(work: Path) -> None:
    outcome = await run(work, {"script": "kill -9 $$"})
    assert (outcome.exit_code, outcome.error) == (-9, "killed by signal SIGKILL")


async def test_script_runs_in_a_shell(work: Path) -> None:
    outcome = await run(work, {"script": "for i in 1 2 3; do printf $i; done | wc -c"})
    assert outcome.stdout is not None and outcome.stdout.strip() == "3"


async def test_env_is_merged_over_the_base_and_job_ids_are_set(work: Path) -> None:
    base = {"PATH": os.environ["PATH"], "KEEP": "base", "OVERRIDE": "base"}
    script = 'echo "$KEEP $OVERRIDE $EXTRA $DISPATCH_JOB_ID $DISPATCH_JOB_ATTEMPT"'
    payload = {"script": script, "env": {"OVERRIDE": "job", "EXTRA": "x"}}
    outcome = await run(work, payload, base_env=base)
    assert outcome.stdout == f"base job x {J1} 2\n"


async def test_cwd_is_relative_to_a_fresh_work_dir_that_is_removed(work: Path) -> None:
    outcome = await run(work, {"script": "pwd; ls -A ..", "cwd": "src/sub"})
    assert outcome.stdout is not None
    cwd, listing = outcome.stdout.splitlines()
    assert cwd.startswith(str(work)) and cwd.endswith("/src/sub")
    assert listing == "sub"  # nothing left over from another job
    assert list(work.iterdir()) == []


async def test_outputs_are_read_back_missing_ones_as_null(work: Path) -> None:
    script = "mkdir out; echo '{\"x\": 1}' > out/r.json"
    payload = {"script": script, "outputs": ["out/r.json", "no"]}
    outcome = await run(work, payload)
    assert outcome.results == {"out/r.json": '{"x": 1}\n', "no": None}


async def test_output_cap_keeps_the_tail(work: Path) -> None:
    script = "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done"
    outcome = await run(work, {"script": script}, output_cap=100)
    assert outcome.stdout is not None
    note, *kept = outcome.stdout.splitlines()
    assert note.startswith("[") and note.endswith("bytes cut]")
    assert kept[-1] == "line1999"
    assert len("\n".join(kept)) <= 100


def test_tail_buffer_counts_what_it_drops() -> None:
    buffer = TailBuffer(4)
    for chunk in (b"ab", b"cdef", b"g"):
        buffer.feed(chunk)
    assert (buffer.text(), buffer.dropped) == ("[3 bytes cut]\ndefg", 3)


async def test_timeout_fails_the_job_and_kills_it(work: Path) -> None:
    started = time.monotonic()
    outcome = await run(work, {"script": "echo started; sleep 30"}, timeout=0.3)
    assert outcome.error == "timeout" and outcome.stdout == "started\n"
    assert time.monotonic() - started < 5


async def test_cancel_kills_the_whole_process_group_including_a_grandchild(work: Path) -> None:
    # The grandchild ignores SIGTERM, so only the SIGKILL after the grace period stops it.
    script = "sh -c 'trap \"\" TERM; echo $$ > grandchild.pid; exec sleep 30' & wait"
    cancel = asyncio.Event()
    task = asyncio.create_task(executor(work).run(job({"script": script}), cancel))
    pid = await read_pid(work)
    cancel.set()
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.error == "canceled"
    assert await wait_dead(pid)


async def test_a_job_that_stops_on_sigterm_keeps_its_last_words(work: Path) -> None:
    script = "trap 'echo bye; exit 0' TERM; echo ready; : > trapped; sleep 30 & wait"
    cancel = asyncio.Event()
    task = asyncio.create_task(executor(work, kill_grace=5).run(job({"script": script}), cancel))
    deadline = time.monotonic() + 10
    while not list(work.glob("job-*/trapped")):  # the trap is set: now SIGTERM is handled
        assert time.monotonic() < deadline, "the job never set its trap"
        await asyncio.sleep(0.02)
    cancel.set()
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.error == "canceled" and outcome.stdout == "ready\nbye\n"


async def test_leftover_background_processes_are_killed_when_the_job_ends(work: Path) -> None:
    outcome = await run(work, {"script": "sleep 30 >/dev/null 2>&1 & echo $!"})
    assert outcome.error is None and outcome.stdout is not None
    assert await wait_dead(int(outcome.stdout))


async def test_cancelling_the_task_kills_the_job(work: Path) -> None:
    # What a second SIGTERM does to the agent: the job task is cancelled, nothing may survive.
    script = "sh -c 'echo $$ > grandchild.pid; exec sleep 30' & wait"
    task = asyncio.create_task(executor(work).run(job({"script": script}), asyncio.Event()))
    pid = await read_pid(work)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_dead(pid)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "neither 'command'"),
        ({"command": [], "script": None}, "non-empty list"),
        ({"command": ["a"], "script": "b"}, "both"),
        ({"command": "echo hi"}, "list of strings"),
        ({"script": "true", "env": {"A": 1}}, "'env'"),
        ({"script": "true", "cwd": "/etc"}, "relative"),
        ({"script": "true", "outputs": ["../x"]}, "relative"),
        ({"script": "true", "outputs": "x"}, "'outputs'"),
        (["echo"], "JSON object"),
        (None, "JSON object"),
    ],
)
async def test_bad_payload_fails_the_job_without_running_anything(
    work: Path, payload: Any, message: str
) -> None:
    outcome = await run(work, payload)
    assert outcome.exit_code is None and outcome.error is not None
    assert message in outcome.error


async def test_missing_program_fails_the_job(work: Path) -> None:
    outcome = await run(work, {"command": ["/nonexistent/program"]})
    assert outcome.error is not None and outcome.error.startswith("cannot start the job")
    assert list(work.iterdir()) == []


def test_stale_work_dirs_are_removed(work: Path) -> None:
    (work / "job-1234abcd-xyz" / "deep").mkdir(parents=True)
    (work / "unrelated").mkdir()
    assert executor(work).remove_stale_work_dirs() == 1
    assert [p.name for p in work.iterdir()] == ["unrelated"]


async def read_pid(work: Path) -> int:
    for _ in range(200):
        for path in work.glob("job-*/grandchild.pid"):
            text = path.read_text().strip()
            if text:
                return int(text)
        await asyncio.sleep(0.02)
    raise AssertionError("the job never wrote its pid")
