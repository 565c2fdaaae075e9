"""The runner's protocol states and the table of legal transitions (h11 style).

``TRANSITIONS`` maps each state to the inputs it accepts and the states each may lead to; a server
message is keyed by its own type (``Job``, ``NoJob``, ``Ack``, ``Cancel``), every other input by the
input's type. ``expect()`` is the one place that looks a transition up. An input missing from the
table raises a ``ProtocolError`` that says whose fault it is:

- a server message that is not allowed in a connected state is the dispatcher's fault
  (``RemoteProtocolError``; the driver closes the channel with ``close_code`` and reconnects);
- anything else (a message with no channel, a job ending when none runs, ...) is the runner's own
  fault (``LocalProtocolError``: a bug in the driver).

``STOPPED`` accepts nothing here; ``RunnerMachine.handle`` ignores every input once stopped.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from dispatch_protocol import closecodes
from dispatch_protocol.messages import Ack, Cancel, Job, NoJob
from runner.events import (
    Connected,
    ConnectFailed,
    ConnectionLost,
    Input,
    JobFinished,
    MessageReceived,
    ShutdownRequested,
    Tick,
)


class State(enum.Enum):
    DISCONNECTED = "disconnected"  # no channel, no job: reconnect after the back-off delay
    RESENDING = "resending"  # connected; a result held from before was re-sent; awaiting its ack
    POLLING = "polling"  # `ready` sent; awaiting `job` or `no_job`
    EXECUTING = "executing"  # a job runs; heartbeats go out
    DRAINING = "draining"  # a job runs, shutdown requested: finish it, then exit
    CANCELING = "canceling"  # the job is being stopped (dispatcher's cancel or drain timeout)
    EXECUTING_OFFLINE = "executing_offline"  # a job runs but the channel is down; reconnecting
    AWAITING_ACK = "awaiting_ack"  # the finished job's terminal message sent; awaiting its ack
    STOPPED = "stopped"  # Exit emitted; every later input is ignored


def _to(*states: State) -> frozenset[State]:
    return frozenset(states)


S = State

# state -> {input type (a server message's type for MessageReceived) -> states it may lead to}
TRANSITIONS: dict[State, dict[type[object], frozenset[State]]] = {
    S.DISCONNECTED: {
        Tick: _to(S.DISCONNECTED, S.STOPPED),
        Connected: _to(S.RESENDING, S.POLLING),
        ConnectFailed: _to(S.DISCONNECTED, S.STOPPED),
        ShutdownRequested: _to(S.STOPPED),
    },
    S.RESENDING: {
        Tick: _to(S.RESENDING, S.DISCONNECTED, S.STOPPED),
        Ack: _to(S.RESENDING, S.POLLING, S.STOPPED),
        Cancel: _to(S.RESENDING),
        ConnectionLost: _to(S.DISCONNECTED, S.STOPPED),
        ShutdownRequested: _to(S.RESENDING, S.STOPPED),
    },
    S.POLLING: {
        Tick: _to(S.POLLING, S.DISCONNECTED),
        Job: _to(S.EXECUTING),
        NoJob: _to(S.POLLING),
        Ack: _to(S.POLLING),
        Cancel: _to(S.POLLING),
        ConnectionLost: _to(S.DISCONNECTED),
        ShutdownRequested: _to(S.STOPPED),
    },
    S.EXECUTING: {
        Tick: _to(S.EXECUTING),
        Ack: _to(S.EXECUTING),
        Cancel: _to(S.EXECUTING, S.CANCELING),
        JobFinished: _to(S.AWAITING_ACK),
        ConnectionLost: _to(S.EXECUTING_OFFLINE),
        ShutdownRequested: _to(S.DRAINING),
    },
    S.DRAINING: {
        Tick: _to(S.DRAINING, S.CANCELING),
        Ack: _to(S.DRAINING),
        Cancel: _to(S.DRAINING, S.CANCELING),
        JobFinished: _to(S.AWAITING_ACK),
        ConnectionLost: _to(S.EXECUTING_OFFLINE),
        ShutdownRequested: _to(S.STOPPED),
    },
    S.CANCELING: {
        Tick: _to(S.CANCELING),
        Ack: _to(S.CANCELING),
        Cancel: _to(S.CANCELING),
        JobFinished: _to(S.AWAITING_ACK),
        ConnectionLost: _to(S.EXECUTING_OFFLINE),
        ShutdownRequested: _to(S.CANCELING, S.STOPPED),
    },
    S.EXECUTING_OFFLINE: {
        Tick: _to(S.EXECUTING_OFFLINE),
        Connected: _to(S.EXECUTING, S.DRAINING, S.CANCELING),
        ConnectFailed: _to(S.EXECUTING_OFFLINE),
        JobFinished: _to(S.DISCONNECTED, S.STOPPED),
        ShutdownRequested: _to(S.EXECUTING_OFFLINE, S.STOPPED),
    },
    S.AWAITING_ACK: {
        Tick: _to(S.AWAITING_ACK, S.DISCONNECTED, S.STOPPED),
        Ack: _to(S.AWAITING_ACK, S.POLLING, S.STOPPED),
        Cancel: _to(S.AWAITING_ACK),
        ConnectionLost: _to(S.DISCONNECTED, S.STOPPED),
        ShutdownRequested: _to(S.AWAITING_ACK, S.STOPPED),
    },
    S.STOPPED: {},  # absorbs every input (see RunnerMachine.handle)
}

SERVER_MESSAGE_TYPES: frozenset[type[object]] = frozenset({Job, NoJob, Ack, Cancel})
CONNECTED_STATES = _to(S.RESENDING, S.POLLING, S.EXECUTING, S.DRAINING, S.CANCELING, S.AWAITING_ACK)
POLICY_VIOLATION = closecodes.POLICY_VIOLATION  # "not allowed in this state", as the server uses it


class ProtocolError(Exception):
    """An input the machine does not accept in its current state; the machine is unchanged."""

    fault: ClassVar[str] = "unknown"

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class LocalProtocolError(ProtocolError):
    """The driver fed an input that cannot happen now: a bug in the runner."""

    fault = "runner"


class RemoteProtocolError(ProtocolError):
    """The dispatcher sent a message not allowed now: close with ``close_code``, reconnect."""

    fault = "dispatcher"


def event_type(event: Input) -> type[object]:
    """The key of ``event`` in ``TRANSITIONS``: a server message's own type, else the input's."""
    return type(event.message) if isinstance(event, MessageReceived) else type(event)


def expect(state: State, event: Input) -> frozenset[State]:
    """The states ``event`` may lead to from ``state``; raises ``ProtocolError`` if illegal."""
    kind = event_type(event)
    targets = TRANSITIONS[state].get(kind)
    if targets is not None:
        return targets
    name = getattr(getattr(kind, "__struct_config__", None), "tag", None) or kind.__name__
    if kind in SERVER_MESSAGE_TYPES and state in CONNECTED_STATES:
        raise RemoteProtocolError(
            f"the dispatcher sent {name!r} while the runner is {state.value} (dispatcher's fault)",
            close_code=POLICY_VIOLATION,
        )
    raise LocalProtocolError(f"input {name} is impossible while {state.value} (runner's fault)")
