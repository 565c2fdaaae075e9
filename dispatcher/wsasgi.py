"""Pure pieces of the pod's WebSocket layer (``dispatcher.wsprotocol``): no I/O, no loop.

- ``channel_scope``: the ASGI ``websocket`` scope of one upgrade request, as the ASGI spec
  (version 2.4, with the ``websocket.http.response`` extension) describes it;
- ``denial``: the HTTP response a refused handshake sends (``send_denial_response``: 401, 429,
  503 from the channel endpoint), in the form of websockets' own ``Response``;
- ``decode_text``: a text message's payload, decoded once, or why it is refused (1007).

Constants shared by every connection (``ASGI``, ``EXTENSIONS``) are module-level objects, not
per-connection copies: with 10,000 idle runners on a pod, every object a connection keeps counts.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from dispatcher.logredact import REDACTED

ASGI = {"version": "3.0", "spec_version": "2.4"}
EXTENSIONS: dict[str, dict[str, object]] = {"websocket.http.response": {}}

INVALID_UTF8 = "text frame is not valid UTF-8"
ABNORMAL = 1006  # the connection ended without a close frame (RFC 6455, 7.1.5)
NO_STATUS = 1005  # a close frame without a code, or the runner went before one was read

Address = tuple[str, int] | None


class Disconnected(OSError):
    """The application sent on a connection that is gone (Starlette turns an OSError into
    ``WebSocketDisconnect``)."""


def channel_scope(
    request: Request,
    *,
    server: Address,
    client: Address,
    scheme: str,
    root_path: str,
    state: dict[str, Any],
) -> dict[str, Any]:
    """The ASGI scope of an upgrade request; header names lowercased, values as ISO-8859-1."""
    raw_path, _, query = request.path.partition("?")
    headers = [
        (name.lower().encode("ascii"), value.encode("latin-1"))
        for name, value in request.headers.raw_items()
    ]
    subprotocols = [
        token.strip()
        for header in request.headers.get_all("Sec-WebSocket-Protocol")
        for token in header.split(",")
        if token.strip()
    ]
    return {
        "type": "websocket",
        "asgi": ASGI,
        "http_version": "1.1",
        "scheme": scheme,
        "server": server,
        "client": client,
        "root_path": root_path,
        "path": root_path + unquote(raw_path),
        "raw_path": (root_path + raw_path).encode("ascii"),
        "query_string": query.encode("ascii"),
        "headers": headers,
        "subprotocols": subprotocols,
        "state": state,
        "extensions": EXTENSIONS,
    }


def logged_path(scope: dict[str, Any]) -> str:
    """The request path for a log line: a query string is never logged (it may hold a token)."""
    return str(scope["path"]) + (REDACTED if scope["query_string"] else "")


def peer_text(client: Address) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"


def header_pairs(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """ASGI header pairs (bytes) as websockets' header pairs (str)."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]


def denial(status: int, headers: Sequence[tuple[str, str]], body: bytes) -> Response:
    """The complete response refusing a handshake; the connection closes after it."""
    if not 100 <= status < 600:
        raise RuntimeError(f"invalid HTTP status {status} in a denial response")
    fields = Headers(list(headers))
    fields.setdefault("Date", email.utils.formatdate(usegmt=True))
    fields.setdefault("Connection", "close")
    fields.setdefault("Content-Length", str(len(body)))
    fields.setdefault("Content-Type", "text/plain; charset=utf-8")
    return Response(status, reason_phrase(status), fields, body)


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def decode_text(payload: bytes) -> str | None:
    """A text message as str, or None when it is not UTF-8 (closed 1007 ``INVALID_UTF8``)."""
    try:
        return payload.decode()
    except UnicodeDecodeError:
        return None
