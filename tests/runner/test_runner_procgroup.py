"""runner.procgroup: recognising a job's process group from /proc, and ending it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.procgroup import (
    ProcessGroup,
    ProcStat,
    describe,
    live_members,
    members,
    parse_stat,
    stop_group,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

# A real line, with a command name that has a space and a ')' in it.
STAT = (
    "4242 (evil) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 "
    "1000000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0 1 2 3 4 5 6 7 0"
)


def test_parse_stat_counts_fields_from_the_last_parenthesis() -> None:
    assert parse_stat(STAT) == ProcStat(
        pid=4242, state="S", pgrp=4242, session=4242, start_time=987654
    )


@pytest.mark.parametrize("line", ["", "12 (x) S 1 2", "no parenthesis at all"])
def test_parse_stat_refuses_what_is_not_a_stat_line(line: str) -> None:
    with pytest.raises(ValueError):
        parse_stat(line)


GROUP = ProcessGroup(pgid=100, start_time=5000, boot_id="b")


def proc(
    pid: int, pgrp: int = 100, session: int = 100, start: int = 5000, state: str = "S"
) -> ProcStat:
    return ProcStat(pid, state, pgrp, session, start)


def test_the_leader_and_its_group_are_the_job() -> None:
    found = [proc(100), proc(101, start=5100), proc(7, pgrp=7, session=7), proc(102, state="Z")]
    assert members(GROUP, found) == [100, 101]  # the zombie has exited already


def test_a_group_whose_leader_died_is_still_the_job() -> None:
    assert members(GROUP, [proc(101, start=5100), proc(103, start=6000)]) == [101, 103]


def test_a_reused_leader_pid_means_the_job_is_gone() -> None:
    # pid 100 belongs to a new process (another start time): the kernel reuses a pid only once no
    # process has it as its group any more, so nothing of the job is left
    assert members(GROUP, [proc(100, start=9000), proc(101, start=9100)]) == []


def test_processes_older_than_the_job_or_of_another_session_are_not_the_job() -> None:
    found = [proc(101, start=4000), proc(102, session=55), proc(103, pgrp=55)]
    assert members(GROUP, found) == []


def test_a_record_from_another_boot_finds_nothing() -> None:
    assert live_members(ProcessGroup(pgid=os.getpid(), start_time=None, boot_id="other-boot")) == []


@pytest.fixture
def job_group() -> Iterator[subprocess.Popen[bytes]]:
    """A job-like session: a shell and a background child that ignores SIGTERM."""
    child = subprocess.Popen(
        ["/bin/sh", "-c", "(trap '' TERM; exec sleep 60) & trap '' TERM; wait"],
        start_new_session=True,
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


async def test_stop_group_kills_the_whole_group_and_waits_until_it_is_gone(
    job_group: subprocess.Popen[bytes],
) -> None:
    group = describe(job_group.pid)
    assert group.start_time is not None and group.boot_id
    # the background child exists once the shell has forked it
    while len(live_members(group)) < 2:
        await asyncio.sleep(0.01)
    found = await stop_group(group, grace=0.2)
    assert job_group.pid in found and len(found) == 2
    job_group.wait()  # the leader was our child: reap it
    assert live_members(group) == []


async def test_stop_group_of_a_group_that_is_gone_does_nothing() -> None:
    assert await stop_group(ProcessGroup(pgid=2**22 + 1, start_time=1), grace=0.1) == []
