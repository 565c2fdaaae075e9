"""How a pod WebSocket connection ends (``dispatcher.wsprotocol``), whichever side ends it.

- the runner's close frame: echoed (websockets queues the echo), the application hears the
  runner's code and reason, the socket closes;
- the application's close (``websocket.close``): the close frame goes out, reading resumes so the
  echo is read, and ``CLOSE_TIMEOUT`` later the socket closes whether it came or not;
- a failure (1007, 1009, 1002: the runner sent something it must not): the close frame goes out
  and the connection lingers ``FAIL_LINGER`` seconds (``dispatcher.linger``) so that the runner
  reads it even while it is still sending;
- uvicorn exiting (``shutdown``): 1012 "service restart" on an open channel (the pod has closed
  its channels with 1001 before, when it could), 500 on a handshake still unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from websockets.exceptions import InvalidState

from dispatcher import wsasgi, wshandshake
from dispatcher.linger import Linger

if TYPE_CHECKING:
    from dispatcher.wsprotocol import ChannelProtocol

CLOSE_TIMEOUT = 10.0  # after the pod's close frame, how long the runner has to echo it
FAIL_LINGER = 2.0  # after a failure close (1007, 1009, ...), how long input is read and dropped

Message = dict[str, Any]


def close_received(proto: ChannelProtocol) -> None:
    if proto.close_sent:  # the runner echoed the pod's close: the handshake is complete
        proto.flush()
        proto.transport.close()
        return
    rcvd = proto.conn.close_rcvd
    code = rcvd.code if rcvd is not None else wsasgi.NO_STATUS
    proto.disconnect(code, rcvd.reason if rcvd is not None else "")
    proto.stop_keepalive()
    proto.flush()  # websockets has queued the echo of the runner's close
    proto.transport.close()


def fail_sent(proto: ChannelProtocol) -> None:
    """websockets (or the pod) failed the connection: a close frame is queued. Send it and
    linger FAIL_LINGER seconds (``dispatcher.linger``)."""
    sent = proto.conn.close_sent
    if not proto.disconnected:
        code = sent.code if sent is not None else wsasgi.ABNORMAL
        proto.disconnect(code, sent.reason if sent is not None else "")
    proto.disconnected = True
    proto.close_sent = True
    proto.stop_keepalive()
    proto.flush()
    if proto.close_timer is not None:
        proto.close_timer.cancel()
        proto.close_timer = None
    proto.read_paused = False
    proto.linger = Linger(proto.transport, FAIL_LINGER)


def send_close(proto: ChannelProtocol, message: Message) -> None:
    if proto.close_sent or proto.transport.is_closing():
        return
    code = int(message.get("code") or 1000)
    proto.disconnect(code, str(message.get("reason") or ""))
    proto.stop_keepalive()
    try:
        proto.conn.send_close(code, str(message.get("reason") or ""))
    except InvalidState:
        proto.transport.close()
        return
    proto.flush()
    if proto.read_paused:  # the runner's echo must be read
        proto.read_paused = False
        proto.transport.resume_reading()
    proto.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, proto.transport.close)


def shutdown(proto: ChannelProtocol) -> None:
    """uvicorn is exiting (the pod closed its channels with 1001 before, when it could)."""
    proto.stop_keepalive()
    if proto.close_sent:
        if proto.close_timer is not None:
            proto.close_timer.cancel()
            proto.close_timer = None
        proto.transport.close()
        return
    if proto.scope is not None and proto.response is None and proto.answered:
        proto.disconnect(1012, "service restart")
        with contextlib.suppress(InvalidState):
            proto.conn.send_close(1012, "service restart")
        proto.flush()
    else:
        wshandshake.send_500(proto)
    proto.transport.close()
