"""The WebSocket close codes of the runner channel: one table for the dispatcher and the runner.

PROTOCOL.md "Close codes" lists them; ``CLOSE_CODES`` is that table (code -> when), and the names
below are what both sides import instead of writing numbers. 1006 (abnormal closure) and 1011
(internal error) are RFC 6455 codes the protocol does not list but both sides meet: 1006 is never
sent, only reported when a connection dropped without a close frame; the dispatcher sends 1011
when it cannot go on (Redis unavailable, a result not durable in time) and the runner reconnects.
"""

from __future__ import annotations

from typing import Final

NORMAL: Final = 1000
GOING_AWAY: Final = 1001
UNSUPPORTED: Final = 1003  # a binary frame
ABNORMAL: Final = 1006  # reported only: the connection dropped without a close frame
INVALID: Final = 1007  # not JSON, not the schema, not UTF-8
POLICY_VIOLATION: Final = 1008  # a message not allowed in the connection's state
TOO_BIG: Final = 1009
INTERNAL: Final = 1011
# RFC 6455 / IANA codes a proxy or server in between may send; not in PROTOCOL.md's table (the
# dispatcher never sends them) but the runner treats them as "this pod is away, try another"
SERVICE_RESTART: Final = 1012
TRY_AGAIN_LATER: Final = 1013
BAD_GATEWAY: Final = 1014
REVOKED: Final = 4001
SUPERSEDED: Final = 4002

CLOSE_CODES: Final[dict[int, str]] = {
    NORMAL: "normal close",
    GOING_AWAY: "the dispatcher pod is shutting down; reconnect (to any pod)",
    UNSUPPORTED: "a binary frame was sent",
    ABNORMAL: "the connection dropped without a close frame (never sent)",
    INVALID: "a frame that is not valid JSON, or a message that does not match the schema",
    POLICY_VIOLATION: "a message not allowed in the connection's current state",
    TOO_BIG: "a message over the size limit",
    INTERNAL: "the dispatcher cannot go on with this connection now (Redis); reconnect",
    REVOKED: "the runner's token was revoked while connected",
    SUPERSEDED: "superseded by a newer connection of the same runner",
}

# the dispatcher refused the message itself: resending it unchanged is refused again
REFUSED_MESSAGE: Final = frozenset({INVALID, TOO_BIG})
