"""`dispatcher up --demo` as a user runs it: a subprocess with an embedded Valkey."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from dispatcher.keys import Keys
from dispatcher.up import free_port


def _start_up(data: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dispatcher",
            "up",
            "--port",
            str(free_port()),
            "--data-dir",
            str(data),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} not seen; output:\n" + "\n".join(lines))


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_demo_jobs_end_processed_failed_and_canceled_and_survive_a_restart(tmp_path):
    data = tmp_path / "state"
    proc = _start_up(data, "--demo")
    try:
        lines = _read_until(proc, "all sample jobs ended", timeout=90)
    finally:
        code = _stop(proc)
    ended = dict(re.findall(r"demo: '(\w+)' ended (\w+)", "\n".join(lines)))
    assert ended == {"succeeds": "processed", "fails": "failed", "canceled": "canceled"}
    assert code == 0
    ids = re.findall(r"demo: submitted '\w+' as ([0-9a-f-]{36})", "\n".join(lines))
    assert len(ids) == 3

    # a second start on the same data directory still knows the jobs
    proc = _start_up(data)
    try:
        banner = _read_until(proc, "Job log", timeout=60)
        url = re.search(r"(redis://127\.0\.0\.1:\d+/0)", "\n".join(banner))
        assert url is not None
        client = redis.Redis.from_url(url.group(1), decode_responses=True)
        statuses = [client.hget(Keys("dispatch").job(job_id), "status") for job_id in ids]
        client.close()
    finally:
        assert _stop(proc) == 0
    assert sorted(str(s) for s in statuses) == ["canceled", "failed", "processed"]
