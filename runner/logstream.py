"""What a running job printed, cut into `log` chunks (protocol 1.1): a pure batcher, no I/O.

Theory of operation: the executor hands over bytes as it reads them from the job's stdout and
stderr (``feed``); a stream's bytes go out as one chunk once FLUSH_BYTES of it are waiting, and
whatever waits goes out FLUSH_INTERVAL seconds after its first byte came (``due``), whichever is
first. ``flush`` empties everything when the job has ended. A chunk never splits a UTF-8
character (an incomplete one waits for its next bytes; only the final flush decodes what is left,
invalid bytes replaced), so its ``data`` is text, and it never exceeds FLUSH_BYTES, far below the
protocol's 64 KiB. ``seq`` counts the attempt's chunks from 0 over both streams. The driver owns
the clock and the socket (``runner.logsend``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dispatch_protocol.messages import Log, LogStream

FLUSH_INTERVAL = 0.5  # seconds from a chunk's first byte to its sending, at most
FLUSH_BYTES = 16 * 1024  # a stream with this much waiting is sent at once
STREAMS: tuple[LogStream, LogStream] = ("stdout", "stderr")


def complete_prefix(buf: bytes | bytearray) -> int:
    """The length of ``buf`` without a UTF-8 sequence cut short at its end."""
    end = len(buf)
    for back in range(1, min(4, end) + 1):
        byte = buf[end - back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: its lead is further back
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte >= 0xF0 else 1
        return end - back if back < need and byte >= 0xC0 else end
    return end


def cut(buf: bytes | bytearray, limit: int) -> int:
    """Where to end a chunk of at most ``limit`` bytes of ``buf``: not inside a character."""
    if len(buf) <= limit:
        return complete_prefix(buf)
    return complete_prefix(buf[:limit]) or limit  # (no boundary at all: invalid bytes, cut)


@dataclass
class LogBatcher:
    """The `log` chunks of one attempt; times are the caller's clock in seconds."""

    job: str
    attempt: int
    interval: float = FLUSH_INTERVAL
    limit: int = FLUSH_BYTES
    seq: int = 0
    waiting_since: float | None = None
    _buffers: dict[LogStream, bytearray] = field(
        default_factory=lambda: {name: bytearray() for name in STREAMS}
    )

    def feed(self, stream: LogStream, data: bytes, now: float) -> list[Log]:
        """``data`` was read from ``stream``; the chunks that are full now."""
        buf = self._buffers[stream]
        buf += data
        out: list[Log] = []
        while len(buf) >= self.limit:
            out.append(self._take(stream, cut(buf, self.limit)))
        if self.waiting_since is None and buf:
            self.waiting_since = now
        self._settle(now)
        return out

    def due(self, now: float) -> list[Log]:
        """The chunks whose time has come (everything waiting, once the interval is over)."""
        if self.waiting_since is None or now - self.waiting_since < self.interval:
            return []
        out = [self._take(name, cut(self._buffers[name], self.limit)) for name in STREAMS]
        self.waiting_since = None
        self._settle(now)
        return [chunk for chunk in out if chunk.data]

    def flush(self) -> list[Log]:
        """Everything left, the job having ended (an incomplete character decoded as U+FFFD)."""
        out = [self._take(name, len(self._buffers[name])) for name in STREAMS]
        self.waiting_since = None
        return [chunk for chunk in out if chunk.data]

    def next_deadline(self) -> float | None:
        """When ``due`` will have something (None: nothing waits)."""
        return None if self.waiting_since is None else self.waiting_since + self.interval

    def _take(self, stream: LogStream, size: int) -> Log:
        buf = self._buffers[stream]
        data = bytes(buf[:size]).decode("utf-8", errors="replace")
        del buf[:size]
        if not data:
            return Log(job=self.job, attempt=self.attempt, seq=self.seq, stream=stream, data="")
        chunk = Log(job=self.job, attempt=self.attempt, seq=self.seq, stream=stream, data=data)
        self.seq += 1
        return chunk

    def _settle(self, now: float) -> None:
        """Nothing waiting any more: no deadline; a held-back partial character keeps one."""
        if not any(self._buffers.values()):
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = now
