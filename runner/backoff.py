"""Reconnect back-off: exponential growth with jitter, as a pure object.

Why jitter: after a dispatcher pod restarts, every runner it held reconnects at once; random delays
spread them out (the old system's flat 5-10 s delay did not, reference §6.2.14). Two strategies:

- ``full``: uniform(0, min(cap, base * 2**n)), the classic "full jitter";
- ``decorrelated``: min(cap, uniform(base, previous * 3)); never shorter than ``base``, so a server
  that accepts and drops every connection at once cannot make the runner spin.

The random generator is injected so tests are deterministic; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal, Protocol

Jitter = Literal["full", "decorrelated"]


class Delays(Protocol):
    """What the runner machine asks of its reconnect policy: a ``Backoff``, or a
    ``runner.failover.Failover`` over several URLs."""

    @property
    def cap(self) -> float:
        """The longest delay."""
        ...

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds."""
        ...

    def reset(self) -> None:
        """A connection succeeded."""
        ...


# 2**60 s is far beyond any cap; stopping the exponent there keeps the float finite forever.
_MAX_EXPONENT = 60


@dataclass
class Backoff:
    """Delays between connection attempts; call ``reset()`` after a successful connection."""

    base: float = 1.0
    cap: float = 60.0
    jitter: Jitter = "decorrelated"
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = field(default=0, init=False)
    _previous: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError("back-off needs 0 < base <= cap")
        self._previous = self.base

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds (grows with each call until reset)."""
        if self.jitter == "full":
            ceiling = min(self.cap, self.base * 2 ** min(self._attempt, _MAX_EXPONENT))
            delay = self.rng.uniform(0.0, ceiling)
        else:
            delay = min(self.cap, self.rng.uniform(self.base, self._previous * 3))
            self._previous = delay
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from ``base`` (the connection worked)."""
        self._attempt = 0
        self._previous = self.base

    @property
    def attempts(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt
