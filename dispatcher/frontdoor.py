"""The pod's front door: the HTTP/1.1 protocol of every new connection.

uvicorn takes the protocol of a new connection from its public ``Config(http=...)`` option;
``FrontDoor`` is that class (``dispatcher.server`` passes a per-server subclass, ``front_door``),
an ``asyncio.Protocol`` of its own and no subclass of uvicorn's. Theory of operation:

- every byte at a request head's position goes through a ``HeadScanner`` (``dispatcher.headlimits``)
  before any parser: a head over a limit is answered 414/431 and the rest of it is never buffered.
  A complete head is kept (at most ``HeadLimits.max_bytes``) until it is decided;
- a connection holds a ``Ticket`` (``dispatcher.guard``) from the first byte of a head until the
  head is complete, or, for a WebSocket, until the handshake is answered: the pending count
  (past it, 503) and the deadline (an incomplete head is answered 408);
- a complete head that asks for ``Upgrade: websocket`` goes, bytes untouched, to the WebSocket
  protocol class uvicorn resolved from ``Config(ws=...)`` (``config.ws_protocol_class``, ours is
  ``dispatcher.wsprotocol.ChannelProtocol``), the same hand-over uvicorn's own HTTP protocols make
  (construct with ``config``, ``server_state``, ``app_state``; ``connection_made``;
  ``transport.set_protocol``; ``data_received`` with the head). The ticket goes along. The front
  door is then unreferenced: an idle runner costs only its WebSocket protocol;
- any other head is a plain request, framed by h11 and answered by the ASGI application
  (``dispatcher.httpexchange``), one at a time: bytes pipelined behind it are scanned at once for
  the limits (an oversized one is refused before the earlier response is written) and held,
  with reading paused, until its response is complete;
- a refusal is written, and the connection lingers (``dispatcher.linger``) so that the client
  reads it before the close; it is logged at INFO through the gate's digest, never as an error.

Why not the alternatives (measured in docs/operations.md, "The pod's server layer"): uvicorn's
httptools protocol behind a subclass (what this replaced) reached into its private members to
refuse mid-pipeline and to quiet its per-request warnings; composing it behind a front protocol
needs a wrapper transport to stop its writes after a refusal and still cannot answer its parse
errors with a linger or keep its warnings out of the log. The pod's plain HTTP is two probes, so
a small h11 bridge costs little and leaves the whole connection's behaviour in this package.
Measured (``python -m bench.wscpu``, server CPU): a probe 0.37 ms against 0.20 ms with httptools
behind the former subclass (h11 is pure Python; a pod answers a few probes per second); an
accepted handshake 1.20 ms against 1.12 ms (level: the application's work dominates); an idle
runner nothing (``python -m bench.connmem``: the front door is gone once the upgrade is handed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import h11

from dispatcher import wsasgi
from dispatcher.guard import HandshakeGate, Ticket, http_response
from dispatcher.headlimits import Exceeded, HeadScanner, Incomplete, wants_websocket
from dispatcher.httpexchange import Exchange, http_scope
from dispatcher.linger import Linger

log = logging.getLogger(__name__)

BODY_HIGH_WATER = 65536  # request body bytes waiting for the application before reading pauses


class FrontDoor(asyncio.Protocol):
    """One connection until it is upgraded (see the module's header).

    ``gate`` is set on a per-server subclass (``front_door``)."""

    gate: ClassVar[HandshakeGate]

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
        self._scanner = HeadScanner(self.gate.limits)
        self._head = bytearray()  # the incomplete head so far
        self._ticket: Ticket | None = None
        self._linger: Linger | None = None
        self._request: h11.Connection | None = None  # while the current request's body arrives
        self._exchange: Exchange | None = None  # the request being answered
        self._pending = bytearray()  # bytes behind it, held until its response is complete
        self._ahead: HeadScanner | None = None  # scans the held bytes for the limits
        self._ahead_done = False  # the held bytes hold a complete head: scanning stops there
        self._idle: asyncio.TimerHandle | None = None  # keep-alive timeout between requests
        self._close_after = False  # shutdown, or the client's EOF: close after the response

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._server_state.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        self._take_ticket()

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            self._linger.drain(data)
        elif self._exchange is None:
            self._feed(data)
        elif self._request is not None:
            self._body(data)
        else:
            self._hold(data)

    def eof_received(self) -> bool | None:
        if self._linger is not None:
            self._linger.peer_closed()
        elif self._exchange is not None:
            self._close_after = True
            return True  # keep the write side open for the response in progress
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_state.connections.discard(self)
        self._release_ticket()
        self._cancel_idle()
        if self._linger is not None:
            self._linger.cancel()
        if self._exchange is not None:
            self._exchange.disconnect()
            self._exchange = None

    def pause_writing(self) -> None:
        pass  # probe responses are small: written whole, the transport buffers them

    def resume_writing(self) -> None:
        pass

    def shutdown(self) -> None:
        """uvicorn is exiting: close now, or after the response in progress."""
        if self._exchange is None:
            self.transport.close()
        else:
            self._close_after = True

    # -- request heads ------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Bytes at a request head's position (no request is being answered)."""
        self._cancel_idle()
        if self._ticket is None and not self._take_ticket():  # the first byte of a next head
            return
        verdict = self._scanner.feed(data)
        if isinstance(verdict, Exceeded):
            self._refuse(verdict.status, verdict.reason)
            return
        if isinstance(verdict, Incomplete):
            self._head += data
            return
        end = verdict.end
        head = bytes(self._head) + data[:end] if self._head else data[:end]
        self._head.clear()
        self._scanner = HeadScanner(self.gate.limits)
        if wants_websocket(head) and self._config.ws_protocol_class is not None:
            self._upgrade(head + data[end:] if end < len(data) else head)
        else:
            self._release_ticket()
            self._serve(head, data[end:])

    def _upgrade(self, data: bytes) -> None:
        """Hand the connection to the WebSocket protocol, as uvicorn's HTTP protocols do."""
        self._server_state.connections.discard(self)
        protocol = self._config.ws_protocol_class(
            config=self._config, server_state=self._server_state, app_state=self._app_state
        )
        transport = self.transport
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            adopt = getattr(protocol, "adopt_ticket", None)  # uvicorn's own protocols have none
            if adopt is not None:
                adopt(ticket)
            else:
                ticket.release()
        protocol.data_received(data)

    # -- plain requests -----------------------------------------------------------------------

    def _serve(self, head: bytes, rest: bytes) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.gate.limits.max_bytes)
        conn.receive_data(head.lstrip(b"\r\n"))  # h11 does not skip empty lines before a request
        try:
            request = conn.next_event()
        except h11.RemoteProtocolError:
            request = None
        if not isinstance(request, h11.Request):
            self._refuse(400, "invalid HTTP request")
            return
        if any(name == b"upgrade" for name, _ in request.headers):
            # h2c and the like: answered as plain HTTP (RFC 9110, 7.8 lets a server ignore it)
            self._note(400, "unsupported upgrade (served as plain HTTP)")
        transport = self.transport
        sockname = transport.get_extra_info("sockname")
        server = (
            (str(sockname[0]), int(sockname[1]))
            if isinstance(sockname, tuple) and len(sockname) >= 2
            else None
        )
        scope = http_scope(
            request,
            server=server,
            client=self.client,
            scheme="https" if transport.get_extra_info("sslcontext") else "http",
            root_path=self._config.root_path,
            state=self._app_state.copy(),
        )
        exchange = Exchange(conn, scope, transport, self._server_state.default_headers, self._done)
        self._exchange = exchange
        self._request = conn
        task = asyncio.get_running_loop().create_task(exchange.run(self._config.loaded_app))
        tasks = self._server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        self._body(rest)

    def _body(self, data: bytes) -> None:
        """The current request's body (h11 knows where it ends); what follows is held."""
        conn, exchange = self._request, self._exchange
        assert conn is not None and exchange is not None
        conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                self._refuse(400, "invalid HTTP request body")
                return
            if event is h11.NEED_DATA:
                if exchange.buffered > BODY_HIGH_WATER:
                    exchange.pause_reading_until_drained()
                return
            if isinstance(event, h11.Data):
                exchange.body_data(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                exchange.body_end()
                self._request = None
                self._hold(conn.trailing_data[0])
                return

    def _hold(self, data: bytes) -> None:
        """Bytes behind a request being answered: scanned for the limits now, parsed later."""
        if not data:
            return
        self._pending += data
        self.transport.pause_reading()  # until the response is complete
        if self._ahead_done:
            return
        if self._ahead is None:
            self._ahead = HeadScanner(self.gate.limits)
        verdict = self._ahead.feed(data)
        if isinstance(verdict, Exceeded):
            self._refuse(verdict.status, verdict.reason)
        elif not isinstance(verdict, Incomplete):
            self._ahead_done = True

    def _done(self, keep_alive: bool) -> None:
        """The response is complete: serve what was held, or wait for the next request."""
        self._exchange = None
        if not keep_alive or self._close_after or self._request is not None:
            self._request = None
            if self._pending:
                self._linger = Linger(self.transport)
            else:
                self.transport.close()
            return
        held = bytes(self._pending)
        self._pending.clear()
        self._ahead = None
        self._ahead_done = False
        self.transport.resume_reading()
        if held:
            self._feed(held)
        else:
            timeout = self._config.timeout_keep_alive
            self._idle = asyncio.get_running_loop().call_later(timeout, self.transport.close)

    # -- tickets and refusals -----------------------------------------------------------------

    def _take_ticket(self) -> bool:
        ticket = self.gate.admit(asyncio.get_running_loop())
        if ticket is None:
            self._refuse(503, "too many pending handshakes", [("Retry-After", "1")])
            return False
        ticket.on_expire = self._expired
        self._ticket = ticket
        return True

    def _release_ticket(self) -> None:
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None

    def _expired(self) -> None:
        self._ticket = None
        if self._linger is None and not self.transport.is_closing():
            self._refuse(408, "request head not received in time")

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _note(self, status: int, reason: str) -> None:
        self.gate.refused(asyncio.get_running_loop(), self.client, status, reason)

    def _refuse(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer ``status`` (nothing of a request in progress is written after it), linger."""
        self._release_ticket()
        self._note(status, reason)
        if self._exchange is not None:
            self._exchange.disconnect()
            self._exchange = None
        self._request = None
        self._pending.clear()
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(http_response(status, reason, headers))
        self._linger = Linger(transport)


def front_door(gate: HandshakeGate) -> type[FrontDoor]:
    """The HTTP protocol class for one server (uvicorn instantiates it per connection)."""

    class PodFrontDoor(FrontDoor):
        pass

    PodFrontDoor.gate = gate
    return PodFrontDoor
