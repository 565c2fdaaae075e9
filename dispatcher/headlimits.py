"""Bounds on an HTTP request head, checked as the bytes arrive and before any parser sees them.

Pure logic, no I/O: a ``HeadScanner`` is fed a connection's bytes chunk by chunk and answers,
for each chunk, whether the head is still incomplete, complete (and where in the chunk it ended),
or over a limit (with the HTTP status that answers it: 414 for the request line, 431 for the
header fields). The server refuses the connection on the first chunk that goes over a limit, so
what a client can make the pod hold is bounded by ``HeadLimits.max_bytes`` whatever it sends.

Lines end with LF (a CR before it is not counted as part of the line). Empty lines before the
request line are skipped (RFC 9112, section 2.2) but their bytes count toward the total.

``wants_websocket`` decides, from a complete head's bytes, which protocol reads it: the
WebSocket protocol (which validates the handshake itself) or the plain HTTP parser.
"""

from __future__ import annotations

from dataclasses import dataclass

URI_TOO_LONG = 414
FIELDS_TOO_LARGE = 431


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """``max_line``: bytes of the request line or of one header line, without its line end;
    ``max_bytes``: the whole head, line ends included; ``max_headers``: header lines."""

    max_line: int = 8192
    max_bytes: int = 16384
    max_headers: int = 64

    def __post_init__(self) -> None:
        if self.max_line < 256 or self.max_bytes < self.max_line or self.max_headers < 8:
            raise ValueError("need max_line >= 256, max_bytes >= max_line and max_headers >= 8")


@dataclass(frozen=True, slots=True)
class Incomplete:
    """The head has not ended yet; feed more."""


@dataclass(frozen=True, slots=True)
class Complete:
    """The head ended; ``end`` is the offset in the last chunk just past its empty line."""

    end: int


@dataclass(frozen=True, slots=True)
class Exceeded:
    """Over a limit: answer with ``status`` and close."""

    status: int
    reason: str


Verdict = Incomplete | Complete | Exceeded
INCOMPLETE = Incomplete()


class HeadScanner:
    """Counts one request head; single use (start a new scanner for the next request)."""

    __slots__ = ("_ends_with_cr", "_line", "_lines", "_total", "limits")

    def __init__(self, limits: HeadLimits) -> None:
        self.limits = limits
        self._total = 0  # bytes of the head so far
        self._line = 0  # bytes of the current line so far, a trailing CR included
        self._ends_with_cr = False  # the current line's last byte so far is CR
        self._lines = 0  # complete non-empty lines: the request line, then header lines

    @property
    def started(self) -> bool:
        """Whether any byte of this head has arrived."""
        return self._total > 0

    def feed(self, data: bytes) -> Verdict:
        """Account for the next chunk of the connection's bytes."""
        limits = self.limits
        pos = 0
        while pos < len(data):
            newline = data.find(b"\n", pos)
            if newline < 0:  # the chunk ends inside a line
                self._grow(data, pos, len(data))
                return self._over() or INCOMPLETE
            self._grow(data, pos, newline)
            self._total += 1  # the LF
            length = self._line - (1 if self._ends_with_cr else 0)
            self._line, self._ends_with_cr = 0, False
            pos = newline + 1
            exceeded = self._check_line(length)
            if exceeded is not None:
                return exceeded
            if self._total > limits.max_bytes:
                return self._too_large()
            if length > 0:
                self._lines += 1
            elif self._lines > 0:
                return Complete(pos)
        return INCOMPLETE

    def _grow(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._line += end - start
            self._total += end - start
            self._ends_with_cr = data[end - 1] == 0x0D

    def _over(self) -> Exceeded | None:
        """Within a line still arriving: is it already certain to be over a limit?"""
        # +1: the line's last byte so far may be the CR of its line end
        if self._line > self.limits.max_line + 1:
            return self._line_too_long()
        if self._total > self.limits.max_bytes:
            return self._too_large()
        return None

    def _check_line(self, length: int) -> Exceeded | None:
        if length > self.limits.max_line:
            return self._line_too_long()
        if length > 0 and self._lines > self.limits.max_headers:  # request line + max_headers
            return Exceeded(FIELDS_TOO_LARGE, "too many header fields")
        return None

    def _line_too_long(self) -> Exceeded:
        if self._lines == 0:
            return Exceeded(URI_TOO_LONG, "request line too long")
        return Exceeded(FIELDS_TOO_LARGE, "header line too long")

    def _too_large(self) -> Exceeded:
        if self._lines == 0:
            return Exceeded(URI_TOO_LONG, "request line too long")
        return Exceeded(FIELDS_TOO_LARGE, "request head too large")


def wants_websocket(head: bytes) -> bool:
    """Whether a complete request head has an ``Upgrade`` field listing ``websocket``
    (case-insensitive, RFC 6455 section 4.2.1); the rest of the handshake is not checked here."""
    lowered = head.lower()
    start = 0
    while True:
        at = lowered.find(b"\nupgrade:", start)
        if at < 0:
            return False
        start = at + len(b"\nupgrade:")
        end = lowered.find(b"\n", start)
        value = lowered[start:end] if end >= 0 else lowered[start:]
        if any(token.strip() == b"websocket" for token in value.split(b",")):
            return True
