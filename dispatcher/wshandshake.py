"""A pod WebSocket connection's handshake, from the request to its answer.

The handshake is answered exactly once, one of four ways, and the guard's ``Ticket`` (pending
count and deadline, ``dispatcher.guard``) is given back at that moment:

- ``websocket.accept``: the prepared 101 goes out (uvicorn's default headers and the application's
  own added), then the connection continues on a fresh framing protocol (``framing``);
- a refusal by the application (``send_denial_response``: 401, 429, 503): its status line at once,
  its body collected and sent whole with its last part, then the close. No ERROR log, no 500;
- ``websocket.close`` before accepting: 403, as the ASGI spec says;
- the application failed or returned without answering: 500 (``send_500``).

A request websockets itself refuses (not a valid handshake: 400, 426; or a head over its own
limits: 414/431) is answered with the response websockets prepared, before the application runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from dispatcher import wsasgi

if TYPE_CHECKING:
    from dispatcher.wsprotocol import ChannelProtocol

log = logging.getLogger("dispatcher.wsprotocol")

Message = dict[str, Any]


def extensions(config: Any) -> list[ServerExtensionFactory]:
    """permessage-deflate when ``DISPATCHER_WS_COMPRESSION`` is on, with small settings."""
    if not config.ws_per_message_deflate:
        return []
    # small window and memory settings: zlib's defaults cost ~300 KB per connection
    return [
        ServerPerMessageDeflateFactory(
            server_max_window_bits=12,
            client_max_window_bits=12,
            compress_settings={"memLevel": 5},
        )
    ]


def framing(handshake: ServerProtocol, max_size: int | None) -> ServerProtocol:
    """A fresh protocol in the OPEN state, with the extensions the handshake agreed.

    The handshake's parser generator keeps the parsed ``Request`` (headers and all, ~3 KB, the
    bearer token among them) in a local variable for the connection's whole life; the frames do
    not need it. A runner sends no frame before the 101 (RFC 6455, 4.1), so the handshake
    protocol holds no unread bytes here."""
    fresh = ServerProtocol(state=State.OPEN, max_size=max_size, logger=log)
    fresh.extensions = handshake.extensions
    return fresh


def refuse_head(proto: ChannelProtocol) -> None:
    """websockets' parser refused the head (414/431 prepared) or found no request at all."""
    proto.handshake_answered()
    proto.close_sent = True
    proto.flush()
    proto.transport.close()


def handle_request(proto: ChannelProtocol, request: Request) -> None:
    """A parsed upgrade request: refused by websockets, or the application runs."""
    response = proto.conn.accept(request)
    if response.status_code != 101:  # not a valid WebSocket handshake: 400, 426, ...
        proto.handshake_answered()
        proto.close_sent = True
        proto.conn.send_response(response)
        proto.flush()
        proto.transport.close()
        return
    proto.response = response
    transport = proto.transport
    sockname = transport.get_extra_info("sockname")
    server = (
        (str(sockname[0]), int(sockname[1]))
        if isinstance(sockname, tuple) and len(sockname) >= 2
        else None
    )
    proto.scope = wsasgi.channel_scope(
        request,
        server=server,
        client=proto.client,
        scheme="wss" if transport.get_extra_info("sslcontext") else "ws",
        root_path=proto.config.root_path,
        state=proto.app_state.copy(),
    )
    proto.start_application()


def send_500(proto: ChannelProtocol) -> None:
    if proto.answered or proto.transport.is_closing():
        return
    proto.handshake_answered()
    proto.conn.send_response(proto.conn.reject(500, "Internal Server Error"))
    proto.flush()


def answer(proto: ChannelProtocol, message: Message) -> None:
    """The application's first message: accept, close (403), or the start of a denial."""
    kind = message["type"]
    assert proto.scope is not None
    response, proto.response = proto.response, None
    if kind == "websocket.accept":
        assert response is not None
        headers = wsasgi.header_pairs(
            [*proto.server_state.default_headers, *message.get("headers", [])]
        )
        if message.get("subprotocol"):
            headers.append(("Sec-WebSocket-Protocol", message["subprotocol"]))
        del response.headers["Date"]
        response.headers.update(headers)
        proto.handshake_answered()
        if proto.transport.is_closing():
            raise wsasgi.Disconnected()
        proto.conn.send_response(response)
        proto.flush()
        proto.conn = framing(proto.conn, proto.config.ws_max_size)
        log.info(
            '%s - "WebSocket %s" [accepted]',
            wsasgi.peer_text(proto.client),
            wsasgi.logged_path(proto.scope),
        )
        proto.opened()
    elif kind == "websocket.close":  # refused without a response of its own: 403
        proto.handshake_answered()
        proto.disconnect(wsasgi.ABNORMAL)
        proto.conn.send_response(proto.conn.reject(403, ""))
        proto.flush()
        proto.transport.close()
    elif kind == "websocket.http.response.start":
        status = int(message["status"])
        headers = wsasgi.header_pairs(message.get("headers", []))
        wsasgi.denial(status, headers, b"")  # an invalid status raises here, before anything
        proto.denial = (status, headers, [])
        proto.handshake_answered()
        log.info(
            '%s - "WebSocket %s" %d',
            wsasgi.peer_text(proto.client),
            wsasgi.logged_path(proto.scope),
            status,
        )
    else:
        raise RuntimeError(f"expected websocket.accept, websocket.close or a denial: {kind!r}")


def send_denial(proto: ChannelProtocol, message: Message) -> None:
    """The body of a refusal (``send_denial_response``); sent whole with its last part."""
    assert proto.denial is not None
    if message["type"] != "websocket.http.response.body":
        raise RuntimeError(f"expected websocket.http.response.body: {message['type']!r}")
    status, headers, body = proto.denial
    body.append(bytes(message.get("body", b"")))
    if message.get("more_body", False):
        return
    proto.denial = None
    proto.disconnect(wsasgi.ABNORMAL)
    if proto.transport.is_closing():
        return
    proto.conn.send_response(wsasgi.denial(status, headers, b"".join(body)))
    proto.flush()
    proto.transport.close()
