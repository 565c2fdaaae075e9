"""The WebSocket side of the channel: the URL, opening it, reading it, and why it was refused.

Only the ``websockets`` asyncio client is used here; the machine never sees a socket. Every way a
connection attempt or an open connection can end is turned into an input (``ConnectFailed`` or
``ConnectionLost``) so the machine decides what happens next.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Callable
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from dispatch_protocol.messages import decode_server_message
from runner import __version__
from runner.events import ConnectFailed, ConnectionLost, Input, MessageReceived

log = logging.getLogger(__name__)

# Jobs carry the producer's payload; the dispatcher caps its own frames at 4 MiB by default, but a
# runner should not be the component that refuses a job the dispatcher chose to send.
MAX_INCOMING_MESSAGE = 64 << 20
_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def channel_url(base: str, runner: str) -> str:
    """``http(s)://HOST[:PORT][/prefix]`` -> ``ws(s)://HOST[:PORT][/prefix]/v1/runners/NAME/channel``."""
    parts = urlsplit(base)
    scheme = _SCHEMES.get(parts.scheme)
    if scheme is None or not parts.hostname or not _valid_port(parts):
        raise ValueError(f"the dispatcher URL must look like http(s)://HOST:PORT, not {base!r}")
    if not runner:
        raise ValueError("the runner name must not be empty")
    path = f"{parts.path.rstrip('/')}/v1/runners/{quote(runner, safe='')}/channel"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _valid_port(parts: SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 - reading it checks it (a number, 0..65535)
    except ValueError:
        return False
    return True


async def open_channel(url: str, token: str, *, open_timeout: float) -> ClientConnection:
    """Open the channel; raises what ``websockets.connect`` raises (see ``connect_failure``)."""
    return await connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        user_agent_header=f"dispatch-runner/{__version__}",
        open_timeout=open_timeout,
        max_size=MAX_INCOMING_MESSAGE,
    )


def connect_failure(exc: BaseException, wall_now: float) -> ConnectFailed:
    """The machine's view of a failed attempt; ``wall_now`` (epoch s) reads an HTTP-date."""
    if not isinstance(exc, InvalidStatus):
        return ConnectFailed(error=f"{type(exc).__name__}: {exc}")
    status = exc.response.status_code
    if status in (401, 403):  # 403 only where the ASGI server cannot send 401 (PROTOCOL.md)
        return ConnectFailed(error=f"HTTP {status}", auth_refused=True)
    if status == 429:
        retry_after = parse_retry_after(exc.response.headers.get("Retry-After"), wall_now)
        return ConnectFailed(error="HTTP 429 too many connection attempts", retry_after=retry_after)
    return ConnectFailed(error=f"HTTP {status} refused the WebSocket upgrade")


def parse_retry_after(value: str | None, wall_now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - wall_now)


async def read_messages(ws: ClientConnection, put: Callable[[Input], None]) -> None:
    """Feed each server message to ``put`` until the connection ends, then ``ConnectionLost``.

    ``ConnectionLost.code`` is the close code the dispatcher sent, or ``None`` when the runner
    itself gave up on the connection (a frame it cannot read) or no close frame arrived.
    """
    try:
        while True:
            frame = await ws.recv()
            if isinstance(frame, bytes):
                await ws.close(1003, "binary frames are not part of the protocol")
                put(ConnectionLost(reason="the dispatcher sent a binary frame"))
                return
            try:
                message = decode_server_message(frame)
            except msgspec.DecodeError as exc:
                log.error("unreadable message from the dispatcher: %s", exc)
                await ws.close(1007, "invalid message")
                put(ConnectionLost(reason=f"invalid message from the dispatcher: {exc}"))
                return
            put(MessageReceived(message))
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        put(ConnectionLost(code=rcvd.code if rcvd else None, reason=rcvd.reason if rcvd else ""))
