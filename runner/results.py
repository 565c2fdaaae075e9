"""Building the terminal message for a finished job, and shrinking one the dispatcher refused.

Pure functions; the machine decides when to call them.
"""

from __future__ import annotations

from typing import Literal

from dispatch_protocol.messages import Canceled, Completed, Failed, Job, Terminal
from runner.events import JobOutcome

CancelCause = Literal["server", "drain"]

# A job stopped because the runner shut down is reported as failed, not canceled: nobody canceled
# it, and the error tells the producer and the operator what happened.
DRAIN_TIMEOUT_ERROR = "runner shutting down: job stopped at the drain timeout"


def terminal_message(job: Job, outcome: JobOutcome, cancel: CancelCause | None) -> Terminal:
    """The terminal message for ``job``; after a dispatcher ``cancel`` it is always ``canceled``."""
    if cancel == "server":
        return Canceled(job=job.job, attempt=job.attempt)
    error = DRAIN_TIMEOUT_ERROR if cancel == "drain" else outcome.error
    if error is None:
        return Completed(
            job=job.job,
            attempt=job.attempt,
            exit_code=outcome.exit_code or 0,
            results=outcome.results,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
        )
    return Failed(
        job=job.job,
        attempt=job.attempt,
        error=error,
        exit_code=outcome.exit_code,
        results=outcome.results,
        stdout=outcome.stdout,
        stderr=outcome.stderr,
    )


def is_bare(message: Terminal) -> bool:
    """True if nothing optional is left to strip from ``message``."""
    if isinstance(message, Canceled):
        return True
    return isinstance(message, Failed) and (message.results, message.stdout, message.stderr) == (
        None,
        None,
        None,
    )


def shrink_result(message: Terminal, code: int | None, reason: str) -> Failed | None:
    """A bare ``failed`` to send instead of a result the dispatcher refused (close 1007/1009).

    Returns ``None`` when ``message`` is already bare: it cannot be made any smaller, so the caller
    drops it rather than resend it forever.
    """
    if is_bare(message):
        return None
    error = f"result refused by the dispatcher (close {code}: {reason}); outputs dropped"
    if isinstance(message, Failed):
        error += f"; original error: {message.error[:500]}"
    exit_code = message.exit_code if isinstance(message, Completed | Failed) else None
    return Failed(job=message.job, attempt=message.attempt, error=error, exit_code=exit_code)
