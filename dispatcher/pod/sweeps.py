"""What each of a pod's ticks does: read the inbox only, sweep, or sweep deep (pure, no I/O).

Every ``reconcile_interval`` every pod re-reads its inbox (one SMEMBERS): that is what makes a
lost bell cost latency only. The rest of the tick is the namespace's, not the pod's: reaping due
leases and releasing due retries (a *sweep*), and, less often, reaping dead pods and counting the
pump's backlog (a *deep* sweep). Any pod may do either, by compare-and-set in one Redis Function
(``dispatch_v3_tick``), so the pods share the work instead of each doing all of it: a pod sweeps
every ``spread`` x ``pods`` ticks (``pods``: the live pod count its last deep sweep saw), from a
random phase, so the namespace is swept about once per ``spread`` (2) intervals whatever the
number of pods, and each pod goes deep every ``deep_every`` of its sweeps. A lease therefore
expires up to 2 intervals late; a delayed retry does not wait for that, as the pod that scheduled
it sweeps when it is due (``Pod.sweep_at``). A sweep also renews the pod's presence, so a pod
never waits more than ``max_every`` ticks between two (a third of the presence TTL by default):
a pod then holds its place in the pod set however many pods there are.

Idle, that is 1 Redis command per pod per interval plus about 3.5 per interval for the namespace
(2 pods: ~5 commands/s), against 10 per pod per interval when every tick did everything
(``bench --scenario floor`` measures it: 1,000 idle runners, pub/sub against the 1 s poll).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

DEEP_EVERY = 5  # a pod's sweeps per deep sweep
SPREAD = 2  # intervals between two sweeps of the namespace (all pods together)


class TickKind(enum.Enum):
    INBOX = "inbox"  # re-read the inbox only
    SWEEP = "sweep"  # renew presence, reap due leases, release due retries, read the inbox
    DEEP = "deep"  # a sweep that also reaps dead pods and counts the pump's backlog


def max_sweep_every(pod_ttl: float, interval: float) -> int:
    """Ticks a pod may go between two sweeps: its presence (renewed by each) must outlive 3."""
    return max(1, int(pod_ttl / interval / 3)) if interval > 0 else 1


@dataclass
class SweepSchedule:
    """The kind of each tick: feed it the live pod count from every deep sweep."""

    max_every: int
    deep_every: int = DEEP_EVERY
    spread: int = SPREAD
    rng: random.Random = field(default_factory=random.Random)
    pods: int = 1
    _until_sweep: int = 0
    _until_deep: int = 0

    def __post_init__(self) -> None:
        # a random phase: pods started together do not all sweep in the same interval
        self._until_sweep = self.rng.randrange(self.every)
        self._until_deep = self.rng.randrange(self.deep_every)

    @property
    def every(self) -> int:
        """Ticks between two sweeps of this pod."""
        return max(1, min(self.pods * self.spread, self.max_every))

    def next(self) -> TickKind:
        """The kind of the next tick."""
        if self._until_sweep > 0:
            self._until_sweep -= 1
            return TickKind.INBOX
        self._until_sweep = self.every - 1
        if self._until_deep > 0:
            self._until_deep -= 1
            return TickKind.SWEEP
        self._until_deep = self.deep_every - 1
        return TickKind.DEEP

    def counted(self, pods: int) -> None:
        """A deep sweep saw ``pods`` live pods (this one included)."""
        self.pods = max(1, pods)
        self._until_sweep = min(self._until_sweep, self.every - 1)
