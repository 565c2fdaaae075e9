"""The pod's WebSocket server layer: one upgraded connection, bridged to the ASGI application.

uvicorn serves the pod and takes the protocol class of an upgraded connection from its public
``Config(ws=...)`` option; ``ChannelProtocol`` is that class (``dispatcher.server`` passes it). It
is an ``asyncio.Protocol`` of its own built on websockets' public sans-I/O ``ServerProtocol``
(handshake validation, frame parsing, masking, close handshake, permessage-deflate), and no
subclass of uvicorn's classes. What it adds to a stock ASGI WebSocket server:

- a text message is decoded **once** (the application gets that ``str``); one that is not UTF-8
  is closed 1007 *with a reason* (PROTOCOL.md: every close carries one);
- a refusal by the application (``send_denial_response``: 401, 429, 503) is the handshake's
  answer: no ERROR log, no 500 attempt after it;
- a request head that websockets' parser refuses (its own line and header limits) gets the
  414/431 response that parser prepared; the guard in front (``dispatcher.guard``) has tighter
  limits, so this is a second line;
- the handshake's ``Ticket`` (pending count and deadline, ``dispatcher.guard``) comes over from
  the HTTP protocol and is given back once the handshake is answered either way;
- a connection failed by the server (1007, 1009, 1002: the runner sent something it must not)
  sends its close frame, shuts its write side and reads and drops the runner's input for a short
  while before the socket closes. Closing at once with unread input makes the kernel send a
  reset, which can destroy the close frame before the runner reads it; so a runner that sends a
  frame over the size limit gets the 1009 close whichever side notices first, with or without
  compression;
- little per-connection state (issue 11, "Memory"): ``__slots__`` instead of an instance dict,
  no ``asyncio.Queue`` (three deques and an Event, ~2.5 KB, for an inbox that holds at most one
  message and a disconnect: reading pauses while a message waits), no ``asyncio.Event`` for
  write flow control (a future only while the transport is paused), the 101 response dropped once
  sent, shared constant scope parts (``dispatcher.wsasgi``).

Why this and not the alternatives (``python -m bench.connmem``; docs/operations.md, "The
WebSocket server layer and memory per connection"):

- *uvicorn's own protocol, configured* (``ws="websockets-sansio"``): reaching the behaviour above
  needs overriding its methods (what the former ``ChannelProtocol`` did, a subclass of a private
  class that breaks with any uvicorn release); it decodes text twice when a check is added, and
  holds a Queue, an Event and a ~40-entry instance dict per connection;
- *websockets' own asyncio server beside Starlette*: no ASGI task chain per connection, but a second
  listening port (or a second HTTP stack on the same one), a second set of head limits and
  handshake refusals to keep equal with the guard, and the channel endpoint rewritten against
  websockets' API instead of Starlette's; the pod's handlers are ASGI code;
- *this protocol*: keeps one port, one guard, the Starlette endpoint unchanged. Measured in the
  same pod, 10,000 idle runners: 16.1 KiB RSS per connection against 28.0 KiB with uvicorn's
  protocol. (websockets' own server was not measured at that size: ``--server bare-websockets``
  and ``--server bare-asgi`` compare the layers alone.)

The contract with uvicorn is its documented one: the class is called with the keyword arguments
``config``, ``server_state`` and ``app_state`` (``uvicorn.protocols.http``'s upgrade path), then
``connection_made`` and ``data_received`` with the request head uvicorn already parsed; on exit
uvicorn calls ``shutdown()`` on every connection in ``server_state.connections``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, cast

from websockets.exceptions import InvalidState
from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from dispatcher import wsasgi
from dispatcher.guard import Ticket

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 10.0  # after the pod's close frame, how long the runner has to echo it
FAIL_LINGER = 2.0  # after a failure close (1007, 1009, ...), how long input is read and dropped

Message = dict[str, Any]
_CONNECT: Message = {"type": "websocket.connect"}


class Disconnected(OSError):
    """The application sent on a connection that is gone (Starlette turns an OSError into
    ``WebSocketDisconnect``)."""


def _extensions(config: Any) -> list[ServerExtensionFactory]:
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


class ChannelProtocol(asyncio.Protocol):
    """One WebSocket connection of the pod (see the module's header)."""

    __slots__ = (
        "_app_state",
        "_close_timer",
        "_config",
        "_denial",
        "_fragments",
        "_inbox",
        "_keepalive",
        "_ping",
        "_response",
        "_server_state",
        "_text",
        "_ticket",
        "_waiter",
        "_writable",
        "answered",
        "client",
        "close_sent",
        "conn",
        "disconnected",
        "failing",
        "read_paused",
        "scope",
        "transport",
    )

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.client: wsasgi.Address = None
        self.conn = ServerProtocol(
            extensions=_extensions(config), max_size=config.ws_max_size, logger=log
        )
        self.scope: dict[str, Any] | None = None
        self._response: Response | None = None  # the 101, until the application accepts
        self.answered = False  # the handshake was answered (101, refusal, or failure)
        self.close_sent = False
        self.disconnected = False
        self.failing = False  # input is read and dropped until the socket closes
        self.read_paused = False
        self._inbox: list[Message] = []
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None  # set while the transport is paused
        self._fragments: list[bytes] | None = None  # a fragmented message being assembled
        self._text = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None  # the next ping, or the pong deadline
        self._ping: bytes | None = None  # the payload of the ping awaiting its pong
        self._ticket: Ticket | None = None
        self._denial: tuple[int, list[tuple[str, str]], list[bytes]] | None = None

    # -- the guard's ticket --------------------------------------------------------------------

    def adopt_ticket(self, ticket: Ticket) -> None:
        """Hold the handshake's ticket until the handshake is answered (or the deadline)."""
        if self.answered or self.transport.is_closing():
            ticket.release()
            return
        self._ticket = ticket
        ticket.on_expire = self._handshake_expired

    def _handshake_expired(self) -> None:
        self._ticket = None
        if not self.answered and not self.transport.is_closing():
            log.info(
                "handshake from %s not answered in time; closing", wsasgi.peer_text(self.client)
            )
            self.transport.close()

    def _handshake_answered(self) -> None:
        self.answered = True
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._server_state.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_keepalive()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None
        self._server_state.connections.discard(self)
        if not self.disconnected:
            code = wsasgi.NO_STATUS if self.answered else wsasgi.ABNORMAL
            self._deliver({"type": "websocket.disconnect", "code": code})
        self.disconnected = True
        self.answered = True
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def eof_received(self) -> bool | None:
        if self.failing:
            self.transport.close()  # the runner stopped sending: nothing left to drop
        return None

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.failing:
            return  # dropped: the close frame is out and the write side shut
        conn = self.conn
        conn.receive_data(data)
        if conn.handshake_exc is not None and self.scope is None and not self.answered:
            self._refuse_head()
            return
        for event in conn.events_received():
            if isinstance(event, Request):
                self._handle_request(event)
            elif isinstance(event, Frame):
                self._handle_frame(event)
            if self.failing or self.transport.is_closing():
                return
        if conn.parser_exc is not None:
            self._fail_sent()
            return
        self._flush()

    # -- handshake -----------------------------------------------------------------------------

    def _refuse_head(self) -> None:
        """websockets' parser refused the head (414/431 prepared) or found no request at all."""
        self._handshake_answered()
        self.close_sent = True
        self._flush()
        self.transport.close()

    def _handle_request(self, request: Request) -> None:
        response = self.conn.accept(request)
        if response.status_code != 101:  # not a valid WebSocket handshake: 400, 426, ...
            self._handshake_answered()
            self.close_sent = True
            self.conn.send_response(response)
            self._flush()
            self.transport.close()
            return
        self._response = response
        config = self._config
        sockname = self.transport.get_extra_info("sockname")
        server = (
            (str(sockname[0]), int(sockname[1]))
            if isinstance(sockname, tuple) and len(sockname) >= 2
            else None
        )
        self.scope = wsasgi.channel_scope(
            request,
            server=server,
            client=self.client,
            scheme="wss" if self.transport.get_extra_info("sslcontext") else "ws",
            root_path=config.root_path,
            state=self._app_state.copy(),
        )
        self._inbox.append(_CONNECT)
        task = asyncio.get_running_loop().create_task(self._run_asgi())
        tasks = self._server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _framing(self, handshake: ServerProtocol) -> ServerProtocol:
        """A fresh protocol in the OPEN state, with the extensions the handshake agreed.

        The handshake's parser generator keeps the parsed ``Request`` (headers and all, ~3 KB,
        the bearer token among them) in a local variable for the connection's whole life; the
        frames do not need it. A runner sends no frame before the 101 (RFC 6455, 4.1), so the
        handshake protocol holds no unread bytes here."""
        framing = ServerProtocol(state=State.OPEN, max_size=self._config.ws_max_size, logger=log)
        framing.extensions = handshake.extensions
        return framing

    async def _run_asgi(self) -> None:
        assert self.scope is not None
        try:
            result = await self._config.loaded_app(self.scope, self.receive, self.send)
        except Disconnected:
            pass
        except BaseException:
            log.exception("exception in the ASGI application")
            self._send_500()
        else:
            if not self.answered:
                log.error("the ASGI application returned without answering the handshake")
                self._send_500()
            elif result is not None:
                log.error("the ASGI application returned %r instead of None", result)
        if self._close_timer is None and not self.failing:
            self.transport.close()

    def _send_500(self) -> None:
        if self.answered or self.transport.is_closing():
            return
        self._handshake_answered()
        self.conn.send_response(self.conn.reject(500, "Internal Server Error"))
        self._flush()

    # -- frames --------------------------------------------------------------------------------

    def _handle_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._text = opcode is Opcode.TEXT
            if frame.fin:
                self._message(bytes(frame.data))
            else:
                self._fragments = [bytes(frame.data)]
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            if fragments is None:  # websockets refuses this itself; never reached
                return
            fragments.append(bytes(frame.data))
            if frame.fin:
                self._fragments = None
                self._message(b"".join(fragments))
        elif opcode is Opcode.PONG:
            self._pong(bytes(frame.data))
        elif opcode is Opcode.CLOSE:
            self._close_received()
        # PING: websockets has queued the pong; the flush after the events sends it

    def _message(self, payload: bytes) -> None:
        if self.close_sent:
            return  # past the application's close: dropped, reading goes on until the echo
        if not self._text:
            self._deliver({"type": "websocket.receive", "bytes": payload})
        else:
            text = wsasgi.decode_text(payload)
            if text is None:
                self.conn.fail(CloseCode.INVALID_DATA, wsasgi.INVALID_UTF8)
                self._fail_sent()
                return
            self._deliver({"type": "websocket.receive", "text": text})
        if not self.read_paused:  # one message at a time: the next waits in the kernel
            self.read_paused = True
            self.transport.pause_reading()

    def _close_received(self) -> None:
        if self.close_sent:  # the runner echoed the pod's close: the handshake is complete
            self._flush()
            self.transport.close()
            return
        rcvd = self.conn.close_rcvd
        code = rcvd.code if rcvd is not None else wsasgi.NO_STATUS
        reason = rcvd.reason if rcvd is not None else ""
        self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.disconnected = True
        self.close_sent = True
        self._flush()  # websockets has queued the echo of the runner's close
        self.transport.close()

    def _fail_sent(self) -> None:
        """websockets (or the pod) failed the connection: a close frame is queued. Send it, shut
        the write side, and drop what the runner still sends for FAIL_LINGER seconds."""
        sent = self.conn.close_sent
        code = sent.code if sent is not None else wsasgi.ABNORMAL
        reason = sent.reason if sent is not None else ""
        if not self.disconnected:
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.disconnected = True
        self.close_sent = True
        self.failing = True
        self._stop_keepalive()
        self._flush()
        transport = self.transport
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = asyncio.get_running_loop().call_later(FAIL_LINGER, transport.close)

    # -- the application's side (ASGI receive/send) -------------------------------------------

    def _deliver(self, message: Message) -> None:
        self._inbox.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> Message:
        while not self._inbox:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        message = self._inbox.pop(0)
        if self.read_paused and not self._inbox and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()
        return message

    async def send(self, message: Message) -> None:
        if self._writable is not None:
            await self._writable
        kind = message["type"]
        if self.disconnected:
            if kind == "websocket.close":
                return  # closed already (by either side): nothing more to say
            raise Disconnected()
        if self._denial is not None:
            self._send_denial(message)
        elif not self.answered:
            self._send_handshake(message)
        elif kind == "websocket.send":
            self._send_data(message)
        elif kind == "websocket.close":
            self._send_close(message)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on an open WebSocket")

    def _send_handshake(self, message: Message) -> None:
        kind = message["type"]
        assert self.scope is not None
        response, self._response = self._response, None
        if kind == "websocket.accept":
            assert response is not None
            headers = wsasgi.header_pairs(
                [*self._server_state.default_headers, *message.get("headers", [])]
            )
            if message.get("subprotocol"):
                headers.append(("Sec-WebSocket-Protocol", message["subprotocol"]))
            del response.headers["Date"]
            response.headers.update(headers)
            self._handshake_answered()
            if self.transport.is_closing():
                raise Disconnected()
            self.conn.send_response(response)
            self._flush()
            self.conn = self._framing(self.conn)
            log.info(
                '%s - "WebSocket %s" [accepted]',
                wsasgi.peer_text(self.client),
                wsasgi.logged_path(self.scope),
            )
            self._start_keepalive()
        elif kind == "websocket.close":  # refused without a response of its own: 403
            self._handshake_answered()
            self._deliver({"type": "websocket.disconnect", "code": wsasgi.ABNORMAL})
            self.disconnected = True
            self.close_sent = True
            self.conn.send_response(self.conn.reject(403, ""))
            self._flush()
            self.transport.close()
        elif kind == "websocket.http.response.start":
            status = int(message["status"])
            headers = wsasgi.header_pairs(message.get("headers", []))
            wsasgi.denial(status, headers, b"")  # an invalid status raises here, before anything
            self._denial = (status, headers, [])
            self._handshake_answered()
            log.info(
                '%s - "WebSocket %s" %d',
                wsasgi.peer_text(self.client),
                wsasgi.logged_path(self.scope),
                status,
            )
        else:
            raise RuntimeError(f"expected websocket.accept, websocket.close or a denial: {kind!r}")

    def _send_denial(self, message: Message) -> None:
        """The body of a refusal (``send_denial_response``); sent whole with its last part."""
        assert self._denial is not None
        if message["type"] != "websocket.http.response.body":
            raise RuntimeError(f"expected websocket.http.response.body: {message['type']!r}")
        status, headers, body = self._denial
        body.append(bytes(message.get("body", b"")))
        if message.get("more_body", False):
            return
        self._denial = None
        self._deliver({"type": "websocket.disconnect", "code": wsasgi.ABNORMAL})
        self.disconnected = True
        self.close_sent = True
        if self.transport.is_closing():
            return
        self.conn.send_response(wsasgi.denial(status, headers, b"".join(body)))
        self._flush()
        self.transport.close()

    def _send_data(self, message: Message) -> None:
        if self.close_sent or self.transport.is_closing():
            raise Disconnected()
        try:
            data = message.get("bytes")
            if data is not None:
                self.conn.send_binary(data)
            else:
                self.conn.send_text(str(message.get("text", "")).encode())
        except InvalidState:
            raise Disconnected() from None
        self._flush()

    def _send_close(self, message: Message) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        code = int(message.get("code") or 1000)
        reason = str(message.get("reason") or "")
        self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.disconnected = True
        self.close_sent = True
        self._stop_keepalive()
        try:
            self.conn.send_close(code, reason)
        except InvalidState:
            self.transport.close()
            return
        self._flush()
        if self.read_paused:  # the runner's echo must be read
            self.read_paused = False
            self.transport.resume_reading()
        self._close_timer = asyncio.get_running_loop().call_later(
            CLOSE_TIMEOUT, self.transport.close
        )

    # -- keepalive -----------------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        interval = self._config.ws_ping_interval
        if interval is not None and interval > 0:
            self._keepalive = asyncio.get_running_loop().call_later(interval, self._send_ping)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        self._ping = None

    def _send_ping(self) -> None:
        self._keepalive = None
        if self.close_sent or self.transport.is_closing():
            return
        self._ping = os.urandom(4)  # a pong for an older ping does not count
        self.conn.send_ping(self._ping)
        self._flush()
        timeout = self._config.ws_ping_timeout
        loop = asyncio.get_running_loop()
        if timeout is not None:
            self._keepalive = loop.call_later(timeout, self._pong_missed)
        else:
            self._start_keepalive()

    def _pong(self, payload: bytes) -> None:
        if self._ping is None or payload != self._ping:
            return  # unsolicited, or for an older ping
        self._ping = None
        if self._keepalive is not None:  # the pong deadline
            self._keepalive.cancel()
            self._keepalive = None
            self._start_keepalive()

    def _pong_missed(self) -> None:
        self._keepalive = None
        self._ping = None
        if self.close_sent or self.transport.is_closing():
            return
        self.conn.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        self._deliver({"type": "websocket.disconnect", "code": wsasgi.ABNORMAL})
        self.disconnected = True
        self.close_sent = True
        self._flush()
        self.transport.close()

    # -- shutdown and output -------------------------------------------------------------------

    def shutdown(self) -> None:
        """uvicorn is exiting (the pod closed its channels with 1001 before, when it could)."""
        self._stop_keepalive()
        if self.close_sent:
            if self._close_timer is not None:
                self._close_timer.cancel()
                self._close_timer = None
            self.transport.close()
            return
        if self.scope is not None and self._response is None and self.answered:
            self._deliver({"type": "websocket.disconnect", "code": 1012})
            self.disconnected = True
            self.close_sent = True
            with contextlib.suppress(InvalidState):
                self.conn.send_close(1012, "service restart")
            self._flush()
        else:
            self._send_500()
        self.transport.close()

    def _flush(self) -> None:
        data = b"".join(self.conn.data_to_send())
        if data and not self.transport.is_closing():
            self.transport.write(data)
