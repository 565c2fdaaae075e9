"""The pod's WebSocket server layer: one upgraded connection, bridged to the ASGI application.

uvicorn takes the protocol class of an upgraded connection from its public ``Config(ws=...)``
option; ``ChannelProtocol`` is that class (``dispatcher.server`` passes it, the front door,
``dispatcher.frontdoor``, hands each upgrade to it). It is an ``asyncio.Protocol`` of its own on
websockets' public sans-I/O ``ServerProtocol`` (handshake validation, frame parsing, masking,
close handshake, permessage-deflate), and no subclass of uvicorn's classes. Its parts:

- the handshake until it is answered (accept, denial, 403, 500): ``dispatcher.wshandshake``;
  the front door's ``Ticket`` (pending count, deadline) is held until then (``adopt_ticket``);
- frames, here: a text message is decoded **once** (the application gets that ``str``); one that
  is not UTF-8 is closed 1007 *with a reason* (PROTOCOL.md: every close carries one);
- every way a connection ends (the runner's close, the application's, a failure such as 1009
  lingering so the runner reads it, uvicorn's shutdown): ``dispatcher.wsclosing``;
- keepalive pings on one timer per server (``dispatcher.wskeepalive``), not one per connection;
- little per-connection state (issue 11, "Memory"): ``__slots__``, no ``asyncio.Queue`` (an inbox
  of a message or two and a disconnect: reading pauses while a message waits behind another), no
  ``asyncio.Event`` for write flow control (a future only while the transport is paused), the
  101 response dropped once sent, shared constant scope parts (``dispatcher.wsasgi``).

Why this and not the alternatives (``python -m bench.connmem``, ``python -m bench.wscpu``;
docs/operations.md, "The pod's server layer"):

- *uvicorn's own protocol, configured* (``ws="websockets-sansio"``): reaching the behaviour above
  needs overriding its methods (a subclass of a private class that breaks with any uvicorn
  release); it decodes text twice when a check is added, and holds a Queue, an Event and a
  ~40-entry instance dict per connection;
- *websockets' own asyncio server beside Starlette*: a second listening port (or a second HTTP
  stack on the same one), a second set of head limits and refusals to keep equal with the front
  door, and the channel endpoint rewritten against websockets' API instead of Starlette's;
- *this protocol*: one port, one front door, the Starlette endpoint unchanged; the figures per
  idle runner and per message are in docs/operations.md.

The contract with uvicorn is its documented one: the class is called with the keyword arguments
``config``, ``server_state`` and ``app_state``, then ``connection_made`` and ``data_received``
with the request head; on exit uvicorn calls ``shutdown()`` on every connection in
``server_state.connections``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, cast

from websockets.exceptions import InvalidState
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from dispatcher import wsasgi, wsclosing, wshandshake
from dispatcher.guard import Ticket
from dispatcher.linger import Linger
from dispatcher.wsasgi import Disconnected
from dispatcher.wskeepalive import KeepaliveSweep, sweep_for

log = logging.getLogger(__name__)


Message = dict[str, Any]
_CONNECT: Message = {"type": "websocket.connect"}

__all__ = ["ChannelProtocol", "Disconnected"]


class ChannelProtocol(asyncio.Protocol):
    """One WebSocket connection of the pod (see the module's header)."""

    __slots__ = (
        "_fragments",
        "_inbox",
        "_ping",
        "_text",
        "_waiter",
        "_writable",
        "answered",
        "app_state",
        "client",
        "close_sent",
        "close_timer",
        "config",
        "conn",
        "denial",
        "disconnected",
        "linger",
        "read_paused",
        "response",
        "scope",
        "server_state",
        "ticket",
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
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.client: wsasgi.Address = None
        self.conn = ServerProtocol(
            extensions=wshandshake.extensions(config), max_size=config.ws_max_size, logger=log
        )
        self.scope: dict[str, Any] | None = None
        self.response: Response | None = None  # the 101, until the application accepts
        self.denial: tuple[int, list[tuple[str, str]], list[bytes]] | None = None
        self.ticket: Ticket | None = None
        self.answered = False  # the handshake was answered (101, refusal, or failure)
        self.close_sent = False
        self.disconnected = False
        self.read_paused = False
        self.linger: Linger | None = None  # a failure close is out: input is dropped
        self._inbox: list[Message] = []
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None  # set while the transport is paused
        self._fragments: list[bytes] | None = None  # a fragmented message being assembled
        self._text = False
        self.close_timer: asyncio.TimerHandle | None = None
        self._ping: bytes | None = None  # the payload of the ping awaiting its pong

    # -- the front door's ticket ---------------------------------------------------------------

    def adopt_ticket(self, ticket: Ticket) -> None:
        """Hold the handshake's ticket until the handshake is answered (or the deadline)."""
        if self.answered or self.transport.is_closing():
            ticket.release()
            return
        self.ticket = ticket
        ticket.on_expire = self._handshake_expired

    def _handshake_expired(self) -> None:
        self.ticket = None
        if not self.answered and not self.transport.is_closing():
            log.info(
                "handshake from %s not answered in time; closing", wsasgi.peer_text(self.client)
            )
            self.transport.close()

    def handshake_answered(self) -> None:
        self.answered = True
        if self.ticket is not None:
            self.ticket.release()
            self.ticket = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server_state.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_keepalive()
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        if self.linger is not None:
            self.linger.cancel()
        if self.ticket is not None:
            self.ticket.release()
            self.ticket = None
        self.server_state.connections.discard(self)
        if not self.disconnected:
            code = wsasgi.NO_STATUS if self.answered else wsasgi.ABNORMAL
            self._deliver({"type": "websocket.disconnect", "code": code})
        self.disconnected = True
        self.answered = True
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def eof_received(self) -> bool | None:
        if self.linger is not None:
            self.linger.peer_closed()  # the runner stopped sending: nothing left to drop
        return None

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.linger is not None:
            self.linger.drain(data)  # the close frame is out and the write side shut
            return
        conn = self.conn
        conn.receive_data(data)
        if conn.handshake_exc is not None and self.scope is None and not self.answered:
            wshandshake.refuse_head(self)
            return
        for event in conn.events_received():
            if isinstance(event, Request):
                wshandshake.handle_request(self, event)
            elif isinstance(event, Frame):
                self._handle_frame(event)
            if self.linger is not None or self.transport.is_closing():
                return
        if conn.parser_exc is not None:
            wsclosing.fail_sent(self)
            return
        self.flush()

    # -- the application -----------------------------------------------------------------------

    def start_application(self) -> None:
        self._inbox.append(_CONNECT)
        task = asyncio.get_running_loop().create_task(self._run_asgi())
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run_asgi(self) -> None:
        assert self.scope is not None
        try:
            result = await self.config.loaded_app(self.scope, self.receive, self.send)
        except Disconnected:
            pass
        except BaseException:
            log.exception("exception in the ASGI application")
            wshandshake.send_500(self)
        else:
            if not self.answered:
                log.error("the ASGI application returned without answering the handshake")
                wshandshake.send_500(self)
            elif result is not None:
                log.error("the ASGI application returned %r instead of None", result)
        if self.close_timer is None and self.linger is None:
            self.transport.close()

    def opened(self) -> None:
        """The 101 is out: the connection is open, keepalive starts."""
        sweep = self._sweep()
        if sweep is not None:
            sweep.add(self)

    def disconnect(self, code: int, reason: str = "") -> None:
        """The application hears the disconnect now; nothing more is sent after a close."""
        self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.disconnected = True
        self.close_sent = True

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
            wsclosing.close_received(self)
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
                wsclosing.fail_sent(self)
                return
            self._deliver({"type": "websocket.receive", "text": text})
        if len(self._inbox) > 1 and not self.read_paused:
            # a message is still waiting for the application: the next ones wait in the kernel.
            # Not after every message: a pause and a resume per message cost two system calls
            # (python -m bench.wscpu), and an application that keeps up never needs them
            self.read_paused = True
            self.transport.pause_reading()

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
        if self.denial is not None:
            wshandshake.send_denial(self, message)
        elif not self.answered:
            wshandshake.answer(self, message)
        elif kind == "websocket.send":
            self._send_data(message)
        elif kind == "websocket.close":
            wsclosing.send_close(self, message)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on an open WebSocket")

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
        self.flush()

    # -- keepalive (one sweep per server, dispatcher.wskeepalive) ------------------------------

    def _sweep(self) -> KeepaliveSweep | None:
        interval = self.config.ws_ping_interval
        if interval is None or interval <= 0:
            return None
        return sweep_for(self.server_state, interval, self.config.ws_ping_timeout)

    def stop_keepalive(self) -> None:
        self._ping = None
        sweep = self._sweep()
        if sweep is not None:
            sweep.discard(self)

    @property
    def ping_outstanding(self) -> bool:
        return self._ping is not None

    def keepalive_ping(self) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        self._ping = os.urandom(4)  # a pong for an older ping does not count
        self.conn.send_ping(self._ping)
        self.flush()

    def _pong(self, payload: bytes) -> None:
        if self._ping is None or payload != self._ping:
            return  # unsolicited, or for an older ping
        self._ping = None
        sweep = self._sweep()
        if sweep is not None:
            sweep.pong(self)

    def keepalive_timeout(self) -> None:
        """No pong within the timeout: close 1011 without waiting for an echo."""
        self._ping = None
        if self.close_sent or self.transport.is_closing():
            return
        self.conn.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        self.disconnect(wsasgi.ABNORMAL)
        self.flush()
        self.transport.close()

    # -- shutdown and output -------------------------------------------------------------------

    def shutdown(self) -> None:
        """uvicorn is exiting (the pod closed its channels with 1001 before, when it could)."""
        wsclosing.shutdown(self)

    def flush(self) -> None:
        data = b"".join(self.conn.data_to_send())
        if data and not self.transport.is_closing():
            self.transport.write(data)
