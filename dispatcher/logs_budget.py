"""How fast one connection may stream `log` data into the pod: a token bucket, pure (time given).

Why: one job printing at full speed sends tens of MB/s of `log` frames; decoding and storing them
costs the pod and Redis CPU that the other runners' dispatch on the same pod then waits for
(``bench.logs``). Past ``rate`` bytes/s (DISPATCHER_LOG_RATE, a burst of ``rate`` bytes allowed)
the pod waits before it reads that connection's next frame, so TCP slows the runner down; nothing
is dropped here, and the other connections never wait for it. 0 = no limit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class LogBudget:
    """Bytes one connection may still send now; refilled at ``rate`` per second up to ``rate``."""

    tokens: float = 0.0  # negative: owed, the wait asked for pays it back
    stamp: float | None = None  # when tokens was last brought up to date (None: never)

    def charge(self, size: int, now: float, rate: float) -> float:
        """``size`` bytes arrived at ``now``; how long to wait before reading more (seconds)."""
        if rate <= 0:
            return 0.0
        if self.stamp is None:  # the first chunk: a full bucket
            self.tokens, self.stamp = rate, now
        self.tokens = min(rate, self.tokens + (now - self.stamp) * rate) - size
        self.stamp = now
        return 0.0 if self.tokens >= 0 else -self.tokens / rate
