"""The supervisor of `dispatcher up` with real child processes and a clock the test moves."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from dispatcher import proctree
from dispatcher.restarts import RestartBackoff
from dispatcher.supervisor import Child, StopPlan, Supervisor
from tests.dispatcher.upkit import gone

QUICK = StopPlan(((signal.SIGTERM, 10.0),))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sh(tmp_path: Path, label: str, script: str, plan: StopPlan = QUICK) -> Child:
    return Child(label, ["/bin/sh", "-c", script], {}, tmp_path / f"{label}.log", plan)


def _wait_for_file(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path.name} was not written in {timeout:.0f}s")


def test_a_child_that_exits_is_reported_in_one_line_and_restarted_after_its_delay(tmp_path):
    clock, said = Clock(), list[str]()
    supervisor = Supervisor(said.append, clock=clock)
    starts = tmp_path / "starts"
    child = _sh(tmp_path, "worker", f"echo started >> {starts}; exit 3")
    child.backoff = RestartBackoff(first=0.5, factor=2, cap=10)
    supervisor.start(child)
    assert child.proc is not None
    child.proc.wait(30)
    clock.now += 2.0
    supervisor.check()
    assert said == [
        f"worker exited (status 3) after 2.0s; restarting it in 0.5s (log: {child.log})"
    ]
    clock.now += 0.4
    supervisor.check()  # not yet due
    assert len(said) == 1
    clock.now += 0.1
    supervisor.check()
    assert said[1] == f"worker restarted (pid {child.pid}, restart 1)"
    child.proc.wait(30)
    assert starts.read_text() == "started\nstarted\n"
    clock.now += 1.0
    supervisor.check()
    assert "restarting it in 1.0s" in said[2]  # a second quick exit: the delay doubled
    supervisor.stop([[child]])


def test_tiers_stop_one_after_the_other(tmp_path):
    said: list[str] = []
    supervisor = Supervisor(said.append)
    order = tmp_path / "order"
    children = []
    for name in ("runner", "pod", "redis"):
        ready = tmp_path / f"{name}.ready"
        script = f"trap 'echo {name} >> {order}; exit 0' TERM; echo 1 > {ready}; "
        script += "while :; do sleep 0.05; done"
        children.append(supervisor.start(_sh(tmp_path, name, script)))
        _wait_for_file(ready)  # the trap is set
    supervisor.stop([[children[0]], [children[1]], [children[2]]])
    assert order.read_text().split() == ["runner", "pod", "redis"]
    assert said == [
        "runner stopped (status 0)",
        "pod stopped (status 0)",
        "redis stopped (status 0)",
    ]


def test_a_runner_that_does_not_stop_is_killed_with_its_jobs_process_groups(tmp_path):
    """Like the runner agent, the child starts its job in a session of its own, which killing
    the child's process group alone would leave running under init."""
    job_pid_file = tmp_path / "job.pid"
    stubborn_runner = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "job = subprocess.Popen(['/bin/sh', '-c', \"trap '' TERM; echo $$ > \" + sys.argv[1]"
        " + '; while :; do sleep 1; done'], start_new_session=True)\n"
        "time.sleep(300)\n"
    )
    plan = StopPlan(((signal.SIGTERM, 0.3), (signal.SIGTERM, 0.3)), descendants=True)
    runner = Child(
        "runner r1",
        [sys.executable, "-c", stubborn_runner, str(job_pid_file)],
        {},
        tmp_path / "r1.log",
        plan,
    )
    said: list[str] = []
    supervisor = Supervisor(said.append)
    supervisor.start(runner)
    job_pid = int(_wait_for_file(job_pid_file))
    assert proctree.alive(job_pid)
    assert job_pid in proctree.descendant_groups(runner.pid)  # its own group, below the runner
    supervisor.stop([[runner]])
    assert not runner.running()
    assert gone(job_pid)
    assert said == [
        "runner r1 did not stop in 0.3s; sending SIGTERM",
        "runner r1 did not stop in 0.3s; killing it and the process groups of its jobs",
    ]


def test_the_first_signal_interrupts_a_copy_is_ignored_and_a_later_one_hurries(tmp_path):
    import pytest

    clock, said = Clock(), list[str]()
    supervisor = Supervisor(said.append, clock=clock, resend=lambda _signum: None)
    with pytest.raises(KeyboardInterrupt):
        supervisor.interrupt(signal.SIGTERM, None)
    supervisor.begin_stop()  # as `up` does first thing when it stops
    clock.now += 0.2
    supervisor.interrupt(signal.SIGTERM, None)  # e.g. `make` passing the same SIGTERM on
    assert not supervisor._hurry.is_set()
    clock.now += 1.0
    supervisor.interrupt(signal.SIGINT, None)  # a second Ctrl-C, on purpose
    assert supervisor._hurry.is_set()
    # a hurried stop does not wait for the child's plan (an hour here)
    patient = StopPlan(((signal.SIGCONT, 3600.0),))
    child = supervisor.start(_sh(tmp_path, "slow", "while :; do sleep 0.05; done", patient))
    supervisor.stop([[child]])
    assert not child.running()
    assert said == ["second signal: killing what is left"]


def test_a_later_signal_before_the_stop_began_interrupts_again():
    """The first KeyboardInterrupt was lost (raised inside a finaliser, which Python only
    prints): a second Ctrl-C must still stop `up`."""
    import pytest

    clock, resent = Clock(), list[int]()
    supervisor = Supervisor(lambda _text: None, clock=clock, resend=resent.append)
    with pytest.raises(KeyboardInterrupt):
        supervisor.interrupt(signal.SIGINT, None)
    assert resent == [signal.SIGINT]  # up sends it to itself again unless it began stopping
    clock.now += 0.2
    supervisor.interrupt(signal.SIGINT, None)  # a copy of the first: ignored
    clock.now += 1.5
    with pytest.raises(KeyboardInterrupt):
        supervisor.interrupt(signal.SIGINT, None)
    assert not supervisor._hurry.is_set()


def test_a_signal_that_lands_inside_watch_still_stops_everything(tmp_path):
    """Ctrl-C right after the banner: KeyboardInterrupt raised inside watch(), after the watcher
    thread was made and before it started. stop() must stop the children all the same (it raised
    'cannot join thread before it is started' and left them running)."""
    supervisor = Supervisor(lambda _text: None)
    child = supervisor.start(_sh(tmp_path, "pod", "sleep 60"))
    supervisor._thread = threading.Thread(target=supervisor._loop)  # made, never started
    supervisor.stop([[child]])
    assert gone(child.pid)
