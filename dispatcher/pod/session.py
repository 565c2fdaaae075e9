"""Server-side state of one runner connection: a pure machine, no I/O, no clock.

Theory of operation: Redis decides who owns which job (the fenced functions); this machine only
knows what the *connection* is doing, to enforce PROTOCOL.md rules 2 and 7: one long poll or one
job at a time per connection, and `ready` only when neither is open. `heartbeat` and terminal
messages are allowed in every state and `running` in every state but an open poll; Redis fences
them.

    IDLE --ready--> (waiting for the ready script) --idle--> POLLING --job/no_job--> ...
    IDLE/POLLING --job sent--> IN_FLIGHT --terminal for that job / cancel pushed--> IDLE
    POLLING --poll timeout, `no_job`--> LINGERING --ready--> READYING (no Redis call needed)
                                        LINGERING --linger timeout--> IDLE

LINGERING: after `no_job` the runner stays in Redis's idle sets for a few seconds, because a
well-behaved runner asks again at once; its next `ready` then costs no Redis call at all, so an
idle fleet costs Redis nothing per long poll. A job assigned meanwhile is held and is the answer
to that `ready`; if no `ready` comes, the pod takes the runner out (and hands such a job back).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dispatcher.errors import ProtocolError

POLICY_VIOLATION = 1008


class State(enum.Enum):
    IDLE = "idle"
    READYING = "readying"  # `ready` received, the ready script is running
    POLLING = "polling"
    LINGERING = "lingering"  # `no_job` sent, still in the idle sets, waiting for the next ready
    IN_FLIGHT = "in_flight"


class Event(enum.Enum):
    READY = "ready"  # the runner sent `ready`
    WAIT = "wait"  # the ready script found nothing: hold the poll open
    SEND_JOB = "send_job"  # a `job` is sent to the runner
    NO_JOB = "no_job"  # the poll ended empty and the runner left the idle sets
    LINGER = "linger"  # the poll ended empty; the runner stays in the idle sets for a while
    LINGER_END = "linger_end"  # no `ready` came in time: the runner left the idle sets
    RUNNING = "running"  # the runner (re-)attached to a job with `running`
    JOB_DONE = "job_done"  # the in-flight job ended (terminal recorded, or cancel pushed)


# (state, event) -> next state. A missing pair is a protocol error of the runner's.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.IDLE, Event.READY): State.READYING,
    (State.READYING, Event.WAIT): State.POLLING,
    (State.READYING, Event.SEND_JOB): State.IN_FLIGHT,
    (State.POLLING, Event.SEND_JOB): State.IN_FLIGHT,
    (State.POLLING, Event.NO_JOB): State.IDLE,
    (State.POLLING, Event.LINGER): State.LINGERING,
    (State.LINGERING, Event.READY): State.READYING,
    (State.LINGERING, Event.LINGER_END): State.IDLE,
    (State.IDLE, Event.RUNNING): State.IN_FLIGHT,
    (State.IN_FLIGHT, Event.RUNNING): State.IN_FLIGHT,
    (State.IN_FLIGHT, Event.JOB_DONE): State.IDLE,
}

_REASONS = {
    (State.READYING, Event.READY): "ready while a poll is open",
    (State.POLLING, Event.READY): "ready while a poll is open",
    (State.IN_FLIGHT, Event.READY): "ready while a job is in flight",
    (State.POLLING, Event.RUNNING): "running while a poll is open",
    (State.READYING, Event.RUNNING): "running while a poll is open",
}


@dataclass(slots=True)
class Session:
    """What one connection is doing; ``job``/``attempt`` are set while IN_FLIGHT."""

    state: State = State.IDLE
    job: str = ""
    attempt: int = 0
    poll: int = 0  # increases with every poll, so a stale poll timer can tell it is stale
    sent: tuple[str, int] = ("", 0)  # the last job and attempt sent: never sent twice

    def fire(self, event: Event) -> State:
        """Apply ``event``; raise ProtocolError(1008) when the runner may not do this now."""
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            reason = _REASONS.get((self.state, event))
            if reason is None:  # our own bug, not the runner's
                raise RuntimeError(f"no transition for {event.value} in {self.state.value}")
            raise ProtocolError(POLICY_VIOLATION, reason)
        if event is Event.READY:
            self.poll += 1
        if nxt is not State.IN_FLIGHT:
            self.job, self.attempt = "", 0
        self.state = nxt
        return nxt

    def start_job(self, job: str, attempt: int, event: Event) -> None:
        """A job becomes this connection's job in flight (``SEND_JOB`` or ``RUNNING``)."""
        self.fire(event)
        self.job, self.attempt = job, attempt
        if event is Event.SEND_JOB:
            self.sent = (job, attempt)

    def holds(self, job: str, attempt: int) -> bool:
        """Whether this exact attempt is the connection's job in flight."""
        return self.state is State.IN_FLIGHT and (self.job, self.attempt) == (job, attempt)
