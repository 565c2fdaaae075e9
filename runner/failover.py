"""Which dispatcher URL to connect to next, and how long to wait first: a pure policy.

Theory of operation
-------------------
An agent may be given several dispatcher URLs (one per pod, or one per site). ``Failover`` is fed
what the machine is fed (``observe(event, now)``: connected, connect failed, a message received,
connection lost with a close code, time passing) and answers two questions: ``url``, where the
next attempt goes, and ``next_delay()``, how long to wait before it. It does no I/O and reads no
clock; the driver passes the same ``now`` it gives the machine, and the machine asks it for delays
exactly as it asks a ``Backoff`` (it satisfies ``runner.backoff.Delays``).

The rules:

- Rotate to the next URL after a failed connection attempt (refused, timed out, any HTTP refusal)
  and after a connection that ended in a way that says "this pod is going away or is broken":
  no close frame at all (a killed pod, a cut network, or the runner gave up on an answer),
  1001 going away, 1006, 1011 internal error, 1012 service restart, 1013 try again later,
  1014 bad gateway (RFC 6455 section 7.4.1, IANA WebSocket close code registry).
- Stay on the same URL for every other code: 1000, the protocol codes (1003, 1007, 1008, 1009:
  every pod would answer the same), 4001 revoked and 4002 superseded. Those keep the meaning the
  machine gives them (a revoked token is refused on reconnect and counted; a superseded runner
  waits the longest delay).
- A session in which the dispatcher answered (any message: a job, ``no_job``, an ack) or that
  lasted ``healthy_after`` seconds is healthy: it resets the back-off. A connect failure or a
  shorter session with no answer (a pod that accepts and drops, a pod whose Redis is down) is a
  failure.
- The delay is drawn from the ``Backoff`` once per *level* and every attempt of that level waits
  it; the level goes up by one after as many failures in a row as there are URLs, i.e. only after
  a whole round of URLs failed. With one URL this is the plain back-off (each failure draws the
  next, longer delay), except that connecting alone no longer resets it.
- ``reset()`` (which the machine calls on every ``Connected``) does nothing here: a pod that
  accepts connections and drops them before answering must not make the runner spin; only a
  healthy session resets.

The first URL is picked at random (from the back-off's generator), so a fleet of agents given the
same list spreads over the pods instead of all landing on the first one; there is no "primary" to
return to.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dispatch_protocol import closecodes
from runner.backoff import Backoff
from runner.events import Connected, ConnectFailed, ConnectionLost, Input, MessageReceived

log = logging.getLogger(__name__)

# Close codes after which another pod is tried (see the module docstring).
ROTATE_CLOSE_CODES = frozenset(
    {
        closecodes.GOING_AWAY,
        closecodes.ABNORMAL,
        closecodes.INTERNAL,
        closecodes.SERVICE_RESTART,
        closecodes.TRY_AGAIN_LATER,
        closecodes.BAD_GATEWAY,
    }
)
DEFAULT_HEALTHY_SESSION = 30.0


def should_rotate(code: int | None) -> bool:
    """Whether a connection that ended with ``code`` (``None``: no close frame) moves on."""
    return code is None or code in ROTATE_CLOSE_CODES


class Failover:
    """The reconnect policy over several URLs; see the module docstring."""

    def __init__(
        self,
        urls: Sequence[str],
        backoff: Backoff | None = None,
        *,
        healthy_after: float = DEFAULT_HEALTHY_SESSION,
        start: int | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one URL is needed")
        if len(set(urls)) != len(urls):
            raise ValueError("a URL is given twice")
        if healthy_after < 0:
            raise ValueError("healthy_after must be >= 0")
        self._urls = tuple(urls)
        self._backoff = backoff or Backoff()
        self._healthy_after = healthy_after
        n = len(self._urls)
        self._index = self._backoff.rng.randrange(n) if start is None else start % n
        self._failures = 0  # failed attempts and short sessions in a row
        self._level = -1  # the level ``_level_delay`` was drawn for; -1: none yet
        self._level_delay = 0.0
        self._session_start: float | None = None  # while a connection is open
        self._answered = False  # the dispatcher sent a message on the open connection
        self._now = 0.0  # the latest time observed

    @property
    def urls(self) -> tuple[str, ...]:
        return self._urls

    @property
    def url(self) -> str:
        """Where the next connection attempt goes."""
        return self._urls[self._index]

    @property
    def failures(self) -> int:
        """Failed attempts and short sessions since the last healthy session."""
        return self._failures

    @property
    def cap(self) -> float:
        """The longest delay (the machine waits it after a 4002)."""
        return self._backoff.cap

    # -- inputs -----------------------------------------------------------------------------------

    def observe(self, event: Input, now: float) -> None:
        """Feed every input the machine gets, just before it gets it, with the same ``now``."""
        self._now = now
        match event:
            case Connected():
                self.connected(now)
            case ConnectFailed():
                self.connect_failed(now)
            case ConnectionLost(code=code):
                self.closed(code, now)
            case MessageReceived() if self._session_start is not None:
                self._answered = True

    def connected(self, now: float) -> None:
        self._now = now
        self._session_start, self._answered = now, False

    def connect_failed(self, now: float) -> None:
        self._now = now
        self._session_start = None
        self._fail(rotate=True)

    def closed(self, code: int | None, now: float) -> None:
        """The open connection ended: by the dispatcher with ``code``, or without a close frame
        (``None``: the connection broke, or the runner closed it itself)."""
        self._now = now
        start, self._session_start = self._session_start, None
        if start is None:
            return  # no session was open: already counted
        if self._answered or now - start >= self._healthy_after:
            self._healthy()
            self._rotate_if(should_rotate(code))
        else:
            self._fail(rotate=should_rotate(code))

    # -- what the machine asks (runner.backoff.Delays) --------------------------------------------

    def next_delay(self) -> float:
        """The wait before the next attempt. A session still open here was given up by the runner
        itself (no answer in time): that counts as a close without a close frame."""
        if self._session_start is not None:
            self.closed(None, self._now)
        level = self._failures // len(self._urls)
        if level != self._level:
            self._level, self._level_delay = level, self._backoff.next_delay()
        return self._level_delay

    def reset(self) -> None:
        """Called by the machine on every connection; only a healthy session resets here."""

    # -- helpers ----------------------------------------------------------------------------------

    def _healthy(self) -> None:
        self._failures = 0
        self._level = -1
        self._backoff.reset()

    def _fail(self, *, rotate: bool) -> None:
        self._failures += 1
        self._rotate_if(rotate)

    def _rotate_if(self, rotate: bool) -> None:
        if rotate and len(self._urls) > 1:
            self._index = (self._index + 1) % len(self._urls)
            log.info("next attempt goes to %s", self.url)
