"""When to restart a crashed child of `dispatcher up`: exponential back-off, as a pure object.

A child that crashes at once again and again (Redis gone, a port taken) is restarted after 0.5 s,
1 s, 2 s, ... up to ``cap``; one that ran for ``stable_after`` seconds before it ended counts as
healthy, so its next crash starts the sequence again. Nothing here sleeps or reads a clock: the
caller passes the time, so tests feed it inputs and times and look at the delays.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RestartBackoff:
    """The restart schedule of one child; ``started`` and ``exited`` are told the time."""

    first: float = 0.5
    factor: float = 2.0
    cap: float = 10.0
    stable_after: float = 30.0  # a run at least this long resets the delay to ``first``
    restarts: int = field(default=0, init=False)  # how many restarts were scheduled so far
    _next: float = field(default=0.0, init=False)
    _started_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap or self.factor < 1 or self.stable_after < 0:
            raise ValueError("restart back-off needs 0 < first <= cap, factor >= 1, stable >= 0")
        self._next = self.first

    def started(self, now: float) -> None:
        """The child was (re)started at ``now``."""
        self._started_at = now

    def exited(self, now: float) -> float:
        """The child ended at ``now``; returns the delay before it is started again."""
        if self._started_at is not None and now - self._started_at >= self.stable_after:
            self._next = self.first
        self._started_at = None
        delay = self._next
        self._next = min(self.cap, self._next * self.factor)
        self.restarts += 1
        return delay
