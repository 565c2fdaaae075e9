"""What goes into the runner machine (inputs) and what comes out of it (effects).

Inputs describe something that happened: the driver saw a connection open or close, a message
arrive, a job end, a signal, or simply time passing (``Tick``). Effects are requests the driver
carries out in order. Both are plain frozen dataclasses so tests can compare them with ``==``.
The current time is not part of any input: ``RunnerMachine.handle(event, now)`` takes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispatch_protocol.messages import Job, RunnerMessage, ServerMessage, Terminal

# -- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    """The WebSocket handshake succeeded."""


@dataclass(frozen=True)
class ConnectFailed:
    """The connection attempt failed.

    ``auth_refused``: the dispatcher refused the token (HTTP 401/403).
    ``retry_after``: seconds the dispatcher asked us to wait (HTTP 429 ``Retry-After``).
    """

    error: str
    auth_refused: bool = False
    retry_after: float | None = None


@dataclass(frozen=True)
class ConnectionLost:
    """The open connection ended; ``code``/``reason`` of the dispatcher's close frame, if any."""

    code: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class MessageReceived:
    """The dispatcher sent a message (already decoded and validated)."""

    message: ServerMessage


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended, as the executor saw it.

    ``error`` is ``None`` for success (exit code 0); otherwise a short text such as
    ``"exit code 2"``, ``"timeout"`` or ``"canceled"``.
    """

    exit_code: int | None = None
    error: str | None = None
    results: Any = None
    stdout: str | None = None
    stderr: str | None = None


@dataclass(frozen=True)
class JobFinished:
    """The job's process is gone (it exited, timed out or was stopped)."""

    outcome: JobOutcome


@dataclass(frozen=True)
class ShutdownRequested:
    """SIGTERM/SIGINT: the first one drains, a second one stops at once."""


@dataclass(frozen=True)
class Tick:
    """Time passed; the machine checks its deadlines against ``now``."""


Input = (
    Connected
    | ConnectFailed
    | ConnectionLost
    | MessageReceived
    | JobFinished
    | ShutdownRequested
    | Tick
)

# -- effects ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connect:
    """Open the channel; report ``Connected`` or ``ConnectFailed``."""


@dataclass(frozen=True)
class Send:
    """Write one message on the open channel (a failure shows up as ``ConnectionLost``)."""

    message: RunnerMessage


@dataclass(frozen=True)
class Close:
    """Close the open channel; the machine already counts it as gone (no ``ConnectionLost``)."""

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True)
class StartJob:
    """Record the job as current in the spool, then run it; report ``JobFinished``."""

    job: Job


@dataclass(frozen=True)
class CancelJob:
    """Stop the running job (SIGTERM to its process group, SIGKILL after the grace period)."""

    reason: str


@dataclass(frozen=True)
class PersistResult:
    """Write the terminal message to the spool (durably) and forget the current-job record."""

    message: Terminal


@dataclass(frozen=True)
class DropPersisted:
    """Remove the held result for ``job`` from the spool: the dispatcher acknowledged it
    (``acknowledged``; the driver says so once the file is gone), or refused it for good."""

    job: str
    acknowledged: bool = True


@dataclass(frozen=True)
class Exit:
    """Stop the agent with this process exit status."""

    code: int = 0


Effect = Connect | Send | Close | StartJob | CancelJob | PersistResult | DropPersisted | Exit
