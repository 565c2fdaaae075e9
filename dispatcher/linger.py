"""Closing a connection without destroying the last thing sent on it.

A refusal (an HTTP 4xx/5xx answer, or a WebSocket failure close such as 1009) is written, then
the write side is shut (FIN after it), and what the client still sends is read and dropped for a
short while before the socket closes: closing a socket with unread input makes the kernel send a
reset, which can destroy the response before the client reads it. The drain stops reading past
``LINGER_BYTES`` (the close still waits for the timer), and a client that shuts its own side
first ends the wait at once.
"""

from __future__ import annotations

import asyncio

LINGER_SECONDS = 2.0  # how long a refused connection's input is drained before the close
LINGER_BYTES = 256 * 1024  # past this much, reading stops


class Linger:
    """The last moments of one connection: write side shut, input dropped, close on a timer."""

    __slots__ = ("_drained", "_timer", "_transport")

    def __init__(self, transport: asyncio.Transport, seconds: float = LINGER_SECONDS) -> None:
        self._transport = transport
        self._drained = 0
        self._timer: asyncio.TimerHandle | None = None
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(seconds, transport.close)
        transport.resume_reading()  # reading may have been paused: the drain must read

    def drain(self, data: bytes) -> None:
        """Input that arrived after the refusal: counted and dropped."""
        self._drained += len(data)
        if self._drained > LINGER_BYTES and not self._transport.is_closing():
            self._transport.pause_reading()

    def peer_closed(self) -> None:
        """The client shut its side: nothing more will come, close now."""
        self._transport.close()

    def cancel(self) -> None:
        """The connection is gone; the timer has nothing left to close."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
