"""The children of `dispatcher up`: started, watched, restarted with back-off, stopped in order.

Each child runs in its own session (Ctrl-C in the terminal reaches only `up`) with its output
appended to its log file. A thread looks at the children every ``poll_interval``: one that ended
is reported in one console line and started again after the delay of its ``RestartBackoff``.

Stopping (``stop``) goes tier by tier (`up` passes runners, then the pod, the result writer and
Redis); the children of a tier stop together. Each child gets the steps of its ``StopPlan`` (a
signal, then a bounded wait), and whatever is left after the last step is killed with its process
group, and for a runner with the process groups of its descendants: its jobs run in sessions of
their own, which killing the runner's group does not reach (``dispatcher.proctree``). A second
Ctrl-C (or SIGTERM) while stopping skips the remaining waits. ``interrupt`` is the signal handler
for both: the first signal raises ``KeyboardInterrupt`` (the caller's cue to ``stop``), every later
one only hurries the stop. Two signals can come at once (`kill` of `make`'s process group: `make`
passes its SIGTERM on to `up`), so one within ``SAME_SIGNAL`` seconds of the first counts as the
same; and a second ``KeyboardInterrupt`` would end `up` before it stopped anything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from dispatcher import proctree
from dispatcher.restarts import RestartBackoff

Say = Callable[[str], None]
Clock = Callable[[], float]
KILL_WAIT = 5.0  # after SIGKILL to the group, how long to wait for the child to be reaped
SAME_SIGNAL = 1.0  # a signal this soon after the first one is a copy of it, not a second request


@dataclass(frozen=True)
class StopPlan:
    """How a child is stopped: each (signal, seconds to wait) in turn, then SIGKILL."""

    steps: tuple[tuple[signal.Signals, float], ...]
    descendants: bool = False  # at the last resort, also kill the process groups below it


@dataclass
class Child:
    """One supervised process."""

    label: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    plan: StopPlan
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)
    restart_at: float | None = field(default=None, init=False)  # set while waiting to restart

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self, now: float) -> None:
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = now
        self.restart_at = None
        self.backoff.started(now)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


def describe_exit(code: int) -> str:
    """``status 3``, ``killed by SIGKILL``."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"status {code}"


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter to read)."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


class Supervisor:
    """Starts children, restarts the ones that end, and stops them all in order."""

    def __init__(
        self,
        say: Say,
        clock: Clock = time.monotonic,
        poll_interval: float = 0.2,
        resend: Callable[[int], None] | None = None,
    ):
        self.say = say
        # sends the first signal again if it was lost (tests pass a recorder)
        self.resend = resend if resend is not None else self._resend_later
        self.clock = clock
        self.poll_interval = poll_interval
        self.children: list[Child] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._hurry = threading.Event()
        self._hurry_said = False
        self._interrupted: float | None = None  # when the first signal came (or the stop began)
        self._stopping = False  # begin_stop() was called: signals only hurry
        self._thread: threading.Thread | None = None

    def start(self, child: Child) -> Child:
        """Start ``child`` now and watch it from then on."""
        with self._lock:
            child.start(self.clock())
            self.children.append(child)
        return child

    def watch(self) -> None:
        """Restart children that end, from a background thread, until ``stop``."""
        self._thread = threading.Thread(target=self._loop, name="up-supervisor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(self.poll_interval):
            with self._lock:
                if not self._done.is_set():
                    self.check()

    def check(self) -> None:
        """One look at every child: report the ones that ended, restart the ones that are due."""
        now = self.clock()
        for child in self.children:
            if child.proc is None:
                continue
            if child.restart_at is None:
                code = child.proc.poll()
                if code is None:
                    continue
                ran = now - child.started_at
                delay = child.backoff.exited(now)
                child.restart_at = now + delay
                self.say(
                    f"{child.label} exited ({describe_exit(code)}) after {ran:.1f}s; "
                    f"restarting it in {delay:.1f}s (log: {shown_path(child.log)})"
                )
            elif now >= child.restart_at:
                try:
                    child.start(now)
                except OSError as exc:
                    delay = child.backoff.exited(now)
                    child.restart_at = now + delay
                    self.say(f"{child.label} could not start ({exc}); retrying in {delay:.1f}s")
                    continue
                self.say(
                    f"{child.label} restarted (pid {child.pid}, restart {child.backoff.restarts})"
                )

    def interrupt(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler (SIGINT, SIGTERM): the first signal raises ``KeyboardInterrupt``; any
        later one, or one while stopping, makes ``stop`` skip its remaining waits.

        A later one before the stop began raises again: the first was lost. Python only prints
        an exception raised while it runs a finaliser (``__del__``, a weakref callback), and a
        signal handler runs wherever the main thread is, a garbage-collected Redis connection
        included (seen once: `up` went on following events after Ctrl-C)."""
        now = self.clock()
        if self._interrupted is None:
            self._interrupted = now
            self.resend(signum)  # comes back as "a later one" unless the stop began meanwhile
            raise KeyboardInterrupt
        if now - self._interrupted >= SAME_SIGNAL:
            if not self._stopping:
                self._interrupted = now
                raise KeyboardInterrupt
            self._hurry.set()  # said by _stop_tier: printing here could re-enter a print

    def _resend_later(self, signum: int) -> None:
        """Send ``signum`` to this process again a little after ``SAME_SIGNAL`` unless the stop
        began meanwhile: it then raises anew (see ``interrupt``), so a lost first one costs a
        second, not a second Ctrl-C."""
        timer = threading.Timer(SAME_SIGNAL + 0.2, self._resend_if_lost, (signum,))
        timer.daemon = True
        timer.start()

    def _resend_if_lost(self, signum: int) -> None:
        if not self._stopping:
            os.kill(os.getpid(), signum)

    def begin_stop(self) -> None:
        """From here on a signal hurries the stop, never ends it (call first thing when
        stopping, before anything that could be interrupted)."""
        self._stopping = True
        if self._interrupted is None:
            self._interrupted = self.clock()

    def stop(self, tiers: Sequence[Sequence[Child]]) -> None:
        """Stop every child, tier after tier; returns when none is left running."""
        self.begin_stop()
        self._done.set()
        # The first signal raises KeyboardInterrupt wherever the main thread is, also inside
        # watch() (the thread made but not started yet, or started but not recorded). So: never
        # join a thread that has not started, and take the lock once, which waits out a check()
        # in progress; every later loop sees _done before it checks again.
        with self._lock:
            pass
        if self._thread is not None and self._thread.ident is not None:
            self._thread.join()
        for tier in tiers:
            self._stop_tier([c for c in tier if c.running()])

    def _stop_tier(self, tier: list[Child]) -> None:
        # child -> (index of its current step, when that step's wait ends)
        pending: dict[int, tuple[Child, int, float]] = {}
        now = self.clock()
        for child in tier:
            sig, wait = child.plan.steps[0]
            child.signal(sig)
            pending[id(child)] = (child, 0, now + wait)
        while pending:
            now = self.clock()
            if self._hurry.is_set() and not self._hurry_said:
                self._hurry_said = True
                self.say("second signal: killing what is left")
            for key, (child, step, until) in list(pending.items()):
                if not child.running():
                    code = child.proc.returncode if child.proc is not None else 0
                    self.say(f"{child.label} stopped ({describe_exit(code)})")
                    del pending[key]
                elif self._hurry.is_set() or now >= until:
                    waited = child.plan.steps[step][1]
                    if step + 1 < len(child.plan.steps) and not self._hurry.is_set():
                        sig, wait = child.plan.steps[step + 1]
                        self.say(f"{child.label} did not stop in {waited:g}s; sending {sig.name}")
                        child.signal(sig)
                        pending[key] = (child, step + 1, now + wait)
                    else:
                        self._kill(child, waited)
                        del pending[key]
            if pending:
                time.sleep(0.05)

    def _kill(self, child: Child, waited: float) -> None:
        """The last resort: SIGKILL to the child's group and, if its plan says so, the groups of
        its descendants (collected before the kill, since orphans can no longer be found)."""
        groups = proctree.descendant_groups(child.pid) if child.plan.descendants else set()
        what = " and the process groups of its jobs" if groups else ""
        if not self._hurry.is_set():
            self.say(f"{child.label} did not stop in {waited:g}s; killing it{what}")
        proctree.kill_groups({child.pid, *groups})  # its own session: its pid is its group
        assert child.proc is not None
        try:
            child.proc.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            self.say(f"{child.label} (pid {child.pid}) survived SIGKILL for {KILL_WAIT:.0f}s")
        # the jobs' processes are not our children: wait until they are gone too, so a stop that
        # returns has left nothing running
        if groups and not proctree.wait_groups_gone(groups, KILL_WAIT):
            self.say(f"processes of {child.label}'s jobs survived SIGKILL for {KILL_WAIT:.0f}s")


def console(text: str) -> None:
    """One line on stdout, stamped like the job log's lines."""
    with contextlib.suppress(OSError, ValueError):  # a console gone must not stop the stop
        print(f"{time.strftime('%H:%M:%S')}  up: {text}", flush=True)
