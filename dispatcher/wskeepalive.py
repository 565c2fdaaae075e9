"""Keepalive pings for every WebSocket connection of a server, on one timer.

A timer per connection (the next ping, then the pong deadline) costs a loop timer handle, its
callback and a bound method for each idle runner; with 10,000 runners on a pod that is measurable
(``python -m bench.connmem``). Instead each server has one ``KeepaliveSweep``: a table from
connection to the time its next check is due, and one timer that wakes every quarter of the
shorter period and acts on every connection whose time has come:

- no ping outstanding: send one (``Pinged.keepalive_ping``); its pong is due ``timeout`` later;
- a ping outstanding past its deadline: fail the connection (``Pinged.keepalive_timeout``).

A matching pong (``pong``) makes the next ping due ``interval`` later. So a ping goes out between
``interval`` and 1.25 x ``interval`` after the last pong, and a dead peer is noticed between
``timeout`` and 1.25 x ``timeout`` after its ping: the same guarantees as per-connection timers,
a quarter period coarser. The timer runs only while the table is non-empty.

``due_action`` is the decision alone (pure, tested without a loop).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Literal, Protocol

Action = Literal["wait", "ping", "timeout"]


class Pinged(Protocol):
    """What the sweep needs of a connection."""

    @property
    def ping_outstanding(self) -> bool: ...

    def keepalive_ping(self) -> None: ...

    def keepalive_timeout(self) -> None: ...


def due_action(now: float, due: float, ping_outstanding: bool) -> Action:
    """What a connection whose check is ``due`` needs at ``now``."""
    if now < due:
        return "wait"
    return "timeout" if ping_outstanding else "ping"


class KeepaliveSweep:
    """One server's keepalive: ``add`` when a connection opens, ``discard`` when it closes."""

    def __init__(self, interval: float, timeout: float | None) -> None:
        self.interval = interval
        self.timeout = timeout
        shortest = interval if timeout is None else min(interval, timeout)
        self.tick = max(0.01, shortest / 4)
        self._due: dict[Pinged, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, conn: Pinged) -> None:
        loop = asyncio.get_running_loop()
        self._due[conn] = loop.time() + self.interval
        if self._timer is None:
            self._timer = loop.call_later(self.tick, self._sweep)

    def discard(self, conn: Pinged) -> None:
        self._due.pop(conn, None)
        if not self._due and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pong(self, conn: Pinged) -> None:
        """The answer to ``conn``'s ping came: the next ping is due an interval from now."""
        if conn in self._due:
            self._due[conn] = asyncio.get_running_loop().time() + self.interval

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self.timeout is not None  # without a timeout a ping never fails anything
        for conn, due in list(self._due.items()):
            action = due_action(now, due, deadlines and conn.ping_outstanding)
            if action == "ping":
                conn.keepalive_ping()
                if conn in self._due:
                    wait = self.interval if self.timeout is None else self.timeout
                    self._due[conn] = now + wait
            elif action == "timeout":
                self._due.pop(conn, None)
                conn.keepalive_timeout()
        self._timer = loop.call_later(self.tick, self._sweep) if self._due else None


_SWEEPS: weakref.WeakKeyDictionary[object, KeepaliveSweep] = weakref.WeakKeyDictionary()


def sweep_for(owner: object, interval: float, timeout: float | None) -> KeepaliveSweep:
    """The sweep of one server (``owner``: its uvicorn ``server_state``), made on first use."""
    sweep = _SWEEPS.get(owner)
    if sweep is None:
        sweep = KeepaliveSweep(interval, timeout)
        _SWEEPS[owner] = sweep
    return sweep
