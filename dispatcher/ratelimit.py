"""Rate windows of the handshake: failed authentications per source, refusal log lines per interval.

Pure logic: the caller passes the time (``time.monotonic()`` in the server, plain numbers in
tests), so every window can be tested by feeding inputs.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass


def source_key(address: str) -> str:
    """What failures are counted under: an IPv4 address, or the /64 network of an IPv6 one
    (one host usually holds a whole /64, so counting single IPv6 addresses would limit nothing).
    """
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


@dataclass(slots=True)
class _Window:
    start: float
    failures: int


class FailureLimiter:
    """At most ``per_window`` failed authentications per source in a window of ``window`` s.

    A source's window opens with its first failure. Once it holds ``per_window`` failures, every
    attempt from that source is refused (without looking at its token, so a correct guess gets no
    answer either) until the window closes. ``per_window`` 0 turns the limit off. At most
    ``max_sources`` sources are tracked; past that the oldest window is forgotten.
    """

    def __init__(self, per_window: int, window: float = 60.0, max_sources: int = 65536) -> None:
        if per_window < 0 or window <= 0 or max_sources < 1:
            raise ValueError("per_window >= 0, window > 0 and max_sources >= 1 required")
        self.per_window = per_window
        self.window = window
        self.max_sources = max_sources
        self._windows: OrderedDict[str, _Window] = OrderedDict()  # oldest window first

    def __len__(self) -> int:
        return len(self._windows)

    def retry_after(self, address: str, now: float) -> int | None:
        """Whole seconds until ``address`` may try again, or None if it may try now."""
        if self.per_window == 0:
            return None
        self._expire(now)
        entry = self._windows.get(source_key(address))
        if entry is None or entry.failures < self.per_window:
            return None
        return max(1, math.ceil(entry.start + self.window - now))

    def failed(self, address: str, now: float) -> None:
        """Count one failed authentication of ``address``."""
        if self.per_window == 0:
            return
        self._expire(now)
        key = source_key(address)
        entry = self._windows.get(key)
        if entry is None:
            while len(self._windows) >= self.max_sources:
                self._windows.popitem(last=False)
            self._windows[key] = _Window(now, 1)
        else:
            entry.failures += 1

    def _expire(self, now: float) -> None:
        while self._windows:
            oldest = next(iter(self._windows.values()))
            if oldest.start + self.window > now:
                return
            self._windows.popitem(last=False)


class RefusalDigest:
    """Log lines for refused handshakes: the first refusal of each ``interval`` in full, the
    rest counted and told in one summary line, so a flood costs a line per interval."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._opened: float | None = None  # start of the current interval
        self._held: Counter[str] = Counter()

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def note(self, kind: str, now: float) -> bool:
        """A refusal of ``kind`` happened; True if it should be logged in full now."""
        quiet = self._opened is None or now - self._opened >= self.interval
        if quiet and not self._held:
            self._opened = now
            return True
        self._held[kind] += 1
        return False

    def summary(self, now: float) -> str | None:
        """The line telling what was held back (None if nothing); starts a new interval."""
        if not self._held:
            return None
        total = sum(self._held.values())
        kinds = ", ".join(f"{kind} x{count}" for kind, count in sorted(self._held.items()))
        self._held.clear()
        self._opened = now
        return f"{total} more handshake refusals held back: {kinds}"
