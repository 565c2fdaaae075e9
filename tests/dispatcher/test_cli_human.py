"""`dispatcher status` (tables), `top` and `events [--follow]` as real subprocesses against real
Redis state (each test in its own namespace)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.dispatcher.support import RClient, submit
from tests.podkit import add_runner

BOUND = 20.0  # s: a subprocess start and a Redis round trip on a loaded 2-core machine


def env(settings: Settings, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    return {
        **clean,
        "DISPATCHER_REDIS_URL": settings.redis_url,
        "DISPATCHER_NAMESPACE": settings.namespace,
        "COLUMNS": "160",
        **extra,
    }


def run(settings: Settings, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=env(settings),
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class Follow:
    """A long-running CLI subprocess whose output lines are read by a thread."""

    def __init__(self, settings: Settings, *args: str, **extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", *args],
            env=env(settings, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, predicate: str, count: int = 1) -> list[str]:
        """Lines read until ``predicate`` occurs in ``count`` of them (bounded)."""
        deadline = time.monotonic() + BOUND
        while sum(predicate in line for line in self.seen) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{predicate!r} not seen {count}x in {BOUND} s: {self.seen[-20:]}"
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"exited ({self.proc.poll()}) first: {self.seen[-20:]}"
            self.seen.append(line)
        return self.seen

    def interrupt(self) -> int:
        """Ctrl-C, and the exit status (bounded)."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(BOUND)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(BOUND)


@pytest.fixture
def follows() -> Iterator[list[Follow]]:
    started: list[Follow] = []
    yield started
    for follow in started:
        follow.kill()


def test_status_tables_and_json(settings: Settings, rclient: RClient, keys: Keys) -> None:
    add_runner(settings, "st-1", ["linux"])
    job_id = submit(rclient, keys, spec="linux")
    out = run(settings, "status")
    assert f"namespace {settings.namespace}" in out
    assert "queues per spec" in out and "│ linux" in out
    assert "submitted" in out  # the counters table
    snapshot = json.loads(run(settings, "status", "--json"))
    assert snapshot["specs"]["linux"]["pending"] == 1
    top = run(settings, "top", "--once")
    assert "queues" in top and job_id[:8] in top and "st-1" in top
    frame = json.loads(run(settings, "top", "--json"))
    assert [r["name"] for r in frame["runners"]] == ["st-1"]


def test_events_tail_and_follow(
    settings: Settings, rclient: RClient, keys: Keys, follows: list[Follow]
) -> None:
    first = submit(rclient, keys, spec="linux")
    lines = run(settings, "events", "--json").splitlines()
    assert json.loads(lines[-1])["job"] == first
    assert first in run(settings, "events")

    follow = Follow(settings, "events", "--follow", "--json")
    follows.append(follow)
    follow.until(first)  # the tail is printed, then it blocks on the stream
    second = submit(rclient, keys, spec="linux")
    seen = follow.until(second)
    event = json.loads(seen[-1])
    assert (event["event"], event["job"]) == ("submitted", second)
    assert follow.interrupt() == 0


def test_top_refreshes_until_ctrl_c(
    settings: Settings, rclient: RClient, keys: Keys, follows: list[Follow]
) -> None:
    submit(rclient, keys, spec="linux")
    # a terminal as far as rich is concerned, so the live view redraws in place
    top = Follow(settings, "top", "--interval", "0.2", TTY_COMPATIBLE="1")
    follows.append(top)
    top.until(f"dispatcher {settings.namespace}", count=2)  # two frames drawn
    job_id = submit(rclient, keys, spec="other")
    top.until(job_id[:8])  # a later frame shows the new job
    assert top.interrupt() == 0
