"""Raw TCP clients for the handshake tests: exact bytes out, exact bytes back, and the close."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

CHANNEL = "/v1/runners/{runner}/channel"


def upgrade_head(
    runner: str = "r1",
    token: str | None = None,
    *,
    path: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    end: bool = True,
) -> bytes:
    """A WebSocket upgrade request head (``end=False``: without its final empty line)."""
    lines = [
        f"GET {path or CHANNEL.format(runner=runner)} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name}: {value}" for name, value in extra or []]
    return ("\r\n".join(lines) + "\r\n" + ("\r\n" if end else "")).encode()


@dataclass
class Answer:
    """What the server sent until it closed, and how long that took."""

    data: bytes
    seconds: float

    @property
    def status_line(self) -> str:
        return self.data.split(b"\r\n", 1)[0].decode()

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def header(self, name: str) -> str | None:
        head = self.data.split(b"\r\n\r\n", 1)[0].decode()
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


async def exchange(port: int, data: bytes, *, timeout: float = 10.0) -> Answer:
    """Send ``data``, then read until the server closes (EOF); a reset fails the test."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return Answer(received, time.monotonic() - start)


async def flood_until_answered(
    port: int, first: bytes, more: bytes, *, timeout: float = 10.0
) -> tuple[Answer, int]:
    """Send ``first``, then ``more`` over and over until the server answers; return the answer
    and how many bytes went out. The writer stops at the first write error (the server shut)."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0

    async def pump() -> None:
        nonlocal sent
        try:
            writer.write(first)
            sent += len(first)
            while True:
                writer.write(more)
                sent += len(more)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    pumping = asyncio.create_task(pump())
    try:
        received = await asyncio.wait_for(reader.read(), timeout)
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return Answer(received, time.monotonic() - start), sent


async def hold_open(
    port: int, data: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that sent ``data`` (maybe nothing) and then says nothing more."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
