"""The result spool: durable, atomic, survives a crash-like reopen, one agent at a time."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dispatch_protocol.messages import Canceled, Completed, Failed, Job, Terminal
from runner.spool import CURRENT_FILE, RESULT_FILE, CurrentJob, Spool, SpoolLocked

J1 = "11111111-1111-4111-8111-111111111111"
RESULTS: list[Terminal] = [
    Completed(job=J1, attempt=2, exit_code=0, results={"a.json": "{}", "b": None}, stdout="é"),
    Failed(job=J1, attempt=1, error="exit code 3", exit_code=3, stderr="boom"),
    Canceled(job=J1, attempt=4),
]
JOB = Job(
    job=J1,
    attempt=3,
    spec="linux",
    payload={"script": "true"},
    timeout=10.0,
    heartbeat_interval=5.0,
    created="2025-01-01T00:00:00Z",
)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.mark.parametrize("message", RESULTS, ids=lambda m: type(m).__name__)
def test_result_round_trips(spool: Spool, message: Terminal) -> None:
    with spool:
        spool.save_result(message)
        assert spool.load_result() == message


def test_empty_spool_holds_nothing(spool: Spool) -> None:
    with spool:
        assert spool.load_result() is None
        assert spool.load_current() is None


def test_removed_result_is_gone(spool: Spool) -> None:
    with spool:
        spool.save_result(RESULTS[0])
        spool.remove_result()
        assert spool.load_result() is None
        spool.remove_result()  # twice is fine: an ack can be repeated


def test_result_survives_a_new_process(spool: Spool) -> None:
    with spool:
        spool.save_result(RESULTS[1])
    # A fresh object over the same directory is what a restarted agent sees.
    with Spool(spool.directory) as reopened:
        assert reopened.load_result() == RESULTS[1]


def test_saving_replaces_the_previous_result(spool: Spool) -> None:
    with spool:
        spool.save_result(RESULTS[0])
        spool.save_result(RESULTS[1])
        assert spool.load_result() == RESULTS[1]
        assert sorted(p.name for p in spool.directory.iterdir()) == ["lock", RESULT_FILE]


def test_a_torn_temporary_file_does_not_hide_the_last_good_result(spool: Spool) -> None:
    with spool:
        spool.save_result(RESULTS[0])
        # What a crash in the middle of the next write leaves behind: a partial temporary file.
        (spool.directory / f".{RESULT_FILE}.tmp").write_bytes(b'{"event":"fai')
        assert spool.load_result() == RESULTS[0]
        spool.save_result(RESULTS[2])  # the next write simply replaces the leftover
        assert spool.load_result() == RESULTS[2]
        assert not (spool.directory / f".{RESULT_FILE}.tmp").exists()


def test_the_final_file_is_only_ever_renamed_into_place(spool: Spool) -> None:
    with spool:
        spool.save_result(RESULTS[0])
        before = os.stat(spool.directory / RESULT_FILE).st_ino
        spool.save_result(RESULTS[1])
        assert os.stat(spool.directory / RESULT_FILE).st_ino != before  # a new file, not rewritten


def test_a_corrupt_result_is_set_aside(spool: Spool) -> None:
    with spool:
        (spool.directory / RESULT_FILE).write_bytes(b"not json")
        assert spool.load_result() is None
        assert (spool.directory / f"{RESULT_FILE}.corrupt").read_bytes() == b"not json"
        assert spool.load_result() is None


def test_current_job_is_recorded_and_cleared(spool: Spool) -> None:
    with spool:
        spool.record_current(JOB)
    with Spool(spool.directory) as reopened:
        assert reopened.load_current() == CurrentJob(job=J1, attempt=3, spec="linux")
        reopened.clear_current()
        assert reopened.load_current() is None
        assert not (spool.directory / CURRENT_FILE).exists()


def test_a_second_agent_cannot_open_the_same_spool(spool: Spool) -> None:
    with spool, pytest.raises(SpoolLocked, match="in use"):
        Spool(spool.directory).open()
    with Spool(spool.directory):
        pass  # released on close


def test_the_spool_directory_is_private(spool: Spool) -> None:
    with spool:
        assert stat.S_IMODE(spool.directory.stat().st_mode) == 0o700
