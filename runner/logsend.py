"""Sends a running job's output as `log` messages while it runs (protocol 1.1), best effort.

The executor calls ``output`` for every read from the job's pipes; a ``LogBatcher`` cuts the
chunks and one task sends them in order, on the batcher's deadlines. Nothing waits for the
dispatcher (``log`` is never answered) and nothing is resent: while the runner is disconnected
``send`` drops the chunk, and when the socket is slower than the job, chunks past MAX_QUEUED
are dropped and counted, so the job's pipes never wait for the network. The terminal message
still carries the capped tails (the executor keeps them), so the outcome never depends on this.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from dispatch_protocol.messages import Log, LogStream
from runner.logstream import LogBatcher

log = logging.getLogger(__name__)

MAX_QUEUED = 1024  # chunks waiting for the socket (16 MiB at 16 KiB, the default server cap)
CLOSE_TIMEOUT = 5.0  # how long the job's end waits for its last chunks to go out

SendLog = Callable[[Log], Awaitable[None]]


class LogSender:
    """The `log` stream of one attempt: ``start``, ``output`` as bytes come, ``close``."""

    def __init__(
        self,
        job: str,
        attempt: int,
        send: SendLog,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self._batcher = LogBatcher(job, attempt)
        self._send = send
        self._clock = clock
        self._max_queued = max_queued
        self._queue: collections.deque[Log] = collections.deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # chunks dropped because the socket was behind

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def output(self, stream: LogStream, data: bytes) -> None:
        """Bytes the job wrote to ``stream`` (called by the executor's pipe readers)."""
        self._enqueue(self._batcher.feed(stream, data, self._clock()))
        self._wake.set()

    async def close(self) -> None:
        """The job ended: send what is left (for at most CLOSE_TIMEOUT), then stop."""
        self._enqueue(self._batcher.flush())
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), CLOSE_TIMEOUT)
        await self.cancel()
        if self.dropped:
            log.warning("dropped %d log chunks: the socket was slower than the job", self.dropped)

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _enqueue(self, chunks: list[Log]) -> None:
        for chunk in chunks:
            if len(self._queue) >= self._max_queued:
                self.dropped += 1
            else:
                self._queue.append(chunk)

    async def _run(self) -> None:
        while True:
            deadline = self._batcher.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            self._enqueue(self._batcher.due(self._clock()))
            while self._queue:
                await self._send(self._queue.popleft())
            if self._closing:
                return
