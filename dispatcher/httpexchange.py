"""One plain HTTP request on the pod's front door, answered by the ASGI application over h11.

The pod's port serves two GET probes (``/healthz``, ``/readyz``) beside the runner channel, so
this is a small bridge, not a general server: one request at a time per connection (the front
door, ``dispatcher.frontdoor``, holds pipelined bytes back until the response is complete), h11
for the framing on both sides (request bodies by Content-Length or chunked, responses chunked
when the application gives no length, none for HEAD), the ASGI ``http`` scope of the spec
(version 2.4), uvicorn's ``Date``/``Server`` default headers and its access log line.

An ``Exchange`` ends in one of three ways: the response is complete (``on_done(keep_alive)``),
the application failed (a 500 if nothing was sent yet, otherwise the connection closes), or the
connection went away or was refused (``disconnect()``: later sends are dropped, ``receive``
answers ``http.disconnect``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import h11

from dispatcher import wsasgi

log = logging.getLogger(__name__)
access = logging.getLogger("uvicorn.access")  # uvicorn's logger: its configuration applies

Message = dict[str, Any]
_DISCONNECT: Message = {"type": "http.disconnect"}
ASGI = {"version": "3.0", "spec_version": "2.4"}


def http_scope(
    request: h11.Request,
    *,
    server: wsasgi.Address,
    client: wsasgi.Address,
    scheme: str,
    root_path: str,
    state: dict[str, Any],
) -> dict[str, Any]:
    """The ASGI scope of a parsed request (h11 lowercases header names already)."""
    raw_path, _, query = request.target.partition(b"?")
    return {
        "type": "http",
        "asgi": ASGI,
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": scheme,
        "server": server,
        "client": client,
        "root_path": root_path,
        "path": root_path + unquote(raw_path.decode("latin-1")),
        "raw_path": root_path.encode("latin-1") + raw_path,
        "query_string": query,
        "headers": list(request.headers),
        "state": state,
    }


class Exchange:
    """The application's side of one request: ``receive`` and ``send`` (see the module)."""

    __slots__ = (
        "_body",
        "_conn",
        "_default_headers",
        "_delivered",
        "_head",
        "_on_done",
        "_paused",
        "_transport",
        "_waiter",
        "body_complete",
        "disconnected",
        "response_complete",
        "response_started",
        "scope",
    )

    def __init__(
        self,
        conn: h11.Connection,
        scope: dict[str, Any],
        transport: asyncio.Transport,
        default_headers: list[tuple[bytes, bytes]],
        on_done: Callable[[bool], None],
    ) -> None:
        self._conn = conn
        self.scope = scope
        self._transport = transport
        self._default_headers = default_headers
        self._on_done = on_done
        self._head = scope["method"] == "HEAD"
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False  # reading paused until the application takes the body
        self.body_complete = False
        self._delivered = False  # the last part of the body went to the application
        self.disconnected = False
        self.response_started = False
        self.response_complete = False

    # -- from the front door --------------------------------------------------------------------

    def body_data(self, data: bytes) -> None:
        self._body.append(data)
        self._wake()

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet taken by the application."""
        return sum(len(part) for part in self._body)

    def pause_reading_until_drained(self) -> None:
        if not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def body_end(self) -> None:
        self.body_complete = True
        self._wake()

    def disconnect(self) -> None:
        """The connection is gone or refused: nothing more is written for this request."""
        self.disconnected = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the application ----------------------------------------------------------------------

    async def run(self, app: Any) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException:
            log.exception("exception in the ASGI application")
            self._failed()
        else:
            if result is not None:
                log.error("the ASGI application returned %r instead of None", result)
                self._failed()
            elif not self.response_complete and not self.disconnected:
                log.error("the ASGI application returned without completing its response")
                self._failed()

    def _failed(self) -> None:
        if self.disconnected or self.response_complete:
            return
        if self.response_started:
            self.disconnect()
            self._transport.close()
            return
        self._start(
            500, [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        )
        self._finish(b"Internal Server Error")

    async def receive(self) -> Message:
        while not self.disconnected:
            if self._body or (self.body_complete and not self._delivered):
                data = b"".join(self._body)
                self._body.clear()
                self._delivered = self.body_complete
                if self._paused:
                    self._paused = False
                    self._transport.resume_reading()
                return {"type": "http.request", "body": data, "more_body": not self.body_complete}
            if self.response_complete:
                break
            await self._wait()  # more body, or (all delivered) the disconnect
        return _DISCONNECT

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    async def send(self, message: Message) -> None:
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind!r}")
            self._start(int(message["status"]), list(message.get("headers", [])))
        elif not self.response_complete:
            if kind != "http.response.body":
                raise RuntimeError(f"expected http.response.body, got {kind!r}")
            body = bytes(message.get("body", b""))
            if message.get("more_body", False):
                self._write(body)
            else:
                self._finish(body)
        else:
            raise RuntimeError(f"{kind!r} after the response was complete")

    def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.response_started = True
        scope = self.scope
        if access.hasHandlers():
            access.info(
                '%s - "%s %s HTTP/%s" %d',
                wsasgi.peer_text(scope["client"]),
                scope["method"],
                wsasgi.logged_path(scope),
                scope["http_version"],
                status,
            )
        response = h11.Response(
            status_code=status,
            headers=[*self._default_headers, *headers],
            reason=_phrase(status),
        )
        self._transport.write(self._conn.send(response) or b"")

    def _write(self, body: bytes) -> None:
        if body and not self._head:
            self._transport.write(self._conn.send(h11.Data(data=body)) or b"")

    def _finish(self, body: bytes) -> None:
        self._write(body)
        self._transport.write(self._conn.send(h11.EndOfMessage()) or b"")
        self.response_complete = True
        self._wake()
        conn = self._conn
        self._on_done(conn.our_state is h11.DONE and conn.their_state is h11.DONE)


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
