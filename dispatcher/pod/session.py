"""Server-side state of one runner connection: a pure machine, no I/O, no clock.

Theory of operation: Redis decides who owns which job (the fenced functions); this machine holds
everything the pod knows about one *connection* — its state and every flag that used to be spread
over the socket and four modules — and decides what the thin async layer (``pod.Pod``,
``pod.channel``, ``pod.longpoll``) does next. It enforces PROTOCOL.md rules 2 and 7: one long poll
or one job at a time per connection, and `ready` only when neither is open. `heartbeat` and
terminal messages are allowed in every state and `running` in every state but an open poll; Redis
fences them. `log` (protocol 1.1) is allowed in every state and never changes it (rule 9: never
answered); ``log`` says whether it is worth a Redis call.

    IDLE --ready--> READYING --wait--> POLLING --send_job/no_job--> ...
    IDLE/POLLING/READYING --send_job--> IN_FLIGHT --job_done--> IDLE
    POLLING --linger (`no_job`)--> LINGERING --ready--> READYING (no Redis call needed)
                                   LINGERING --linger_end--> IDLE

Every state change is one row of ``TRANSITIONS``, looked up by ``fire`` before anything changes: a
missing row the runner caused (``_RUNNER_FAULTS``) is a 1008 ProtocolError, any other is our bug.
The flags change only in this module. The decisions the driver asks for (``ready``, ``rung``,
``observed``) return what to do; the driver does the I/O and feeds the outcome back.

LINGERING: after `no_job` the runner stays in Redis's idle sets for a few seconds, because a
well-behaved runner asks again at once; its next `ready` then costs no Redis call at all. A job
assigned meanwhile is held and is the answer to that `ready`; if no `ready` comes, the pod takes
the runner out (and hands such a job back).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dispatch_protocol import closecodes
from dispatcher.errors import ProtocolError
from dispatcher.logs_budget import LogBudget
from dispatcher.pod.bells import Bell, Offer


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
    LOG = "log"  # the runner sent `log`: no state changes, nothing is answered


S, E = State, Event

# (state, event) -> next state. A missing pair is a protocol error (the runner's) or our bug.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.IDLE, E.READY): S.READYING,
    (S.LINGERING, E.READY): S.READYING,
    (S.READYING, E.WAIT): S.POLLING,
    (S.READYING, E.SEND_JOB): S.IN_FLIGHT,
    (S.POLLING, E.SEND_JOB): S.IN_FLIGHT,
    (S.POLLING, E.NO_JOB): S.IDLE,
    (S.POLLING, E.LINGER): S.LINGERING,
    (S.LINGERING, E.LINGER_END): S.IDLE,
    (S.IDLE, E.RUNNING): S.IN_FLIGHT,
    (S.IN_FLIGHT, E.RUNNING): S.IN_FLIGHT,
    (S.IN_FLIGHT, E.JOB_DONE): S.IDLE,
    # `log` never moves the connection (PROTOCOL rule 9); Redis fences it in IDLE and IN_FLIGHT
    (S.IDLE, E.LOG): S.IDLE,
    (S.READYING, E.LOG): S.READYING,
    (S.POLLING, E.LOG): S.POLLING,
    (S.LINGERING, E.LOG): S.LINGERING,
    (S.IN_FLIGHT, E.LOG): S.IN_FLIGHT,
}

# The missing pairs a runner's message causes: 1008 with this reason.
_RUNNER_FAULTS: dict[tuple[State, Event], str] = {
    (S.READYING, E.READY): "ready while a poll is open",
    (S.POLLING, E.READY): "ready while a poll is open",
    (S.IN_FLIGHT, E.READY): "ready while a job is in flight",
    (S.POLLING, E.RUNNING): "running while a poll is open",
    (S.READYING, E.RUNNING): "running while a poll is open",
}

# States in which the runner may sit in Redis's idle sets or hold an unsent job: a detach then
# hands such a job back at once instead of waiting out its start deadline.
RELEASE_ON_DETACH = frozenset({S.POLLING, S.LINGERING, S.READYING})

# States in which a `log` may be for a job the runner still holds in Redis: IN_FLIGHT (claimed
# counts, rule 10) and IDLE (reconnected mid-job, before it re-attaches with `running`). With a
# poll open or lingering the runner holds none: its `ready` ended any attempt (rule 1).
LOG_STORED_IN = frozenset({S.IDLE, S.IN_FLIGHT})


class ReadyPlan(enum.Enum):
    """How to answer a `ready` (``Session.ready``)."""

    ASK_REDIS = "ask_redis"  # run the ready script
    SEND_HELD = "send_held"  # the job held while lingering is the answer (``held_offer``)
    WAIT = "wait"  # still in the idle sets from the linger: open the poll, no Redis call


class BellAction(enum.Enum):
    """What a bell asks of the pod (``Session.rung``)."""

    SEND = "send"  # send the bell's offer now, then observe
    DONE = "done"  # this job and attempt was sent already: nothing to do
    OBSERVE = "observe"  # read the runner's state from Redis


class Observed(enum.Enum):
    """What an ``observe`` reply asks of the pod (``Session.observed``)."""

    NOTHING = "nothing"
    CLOSE_REVOKED = "close_revoked"
    CLOSE_SUPERSEDED = "close_superseded"
    SEND = "send"  # send the reply's offer
    HOLD = "hold"  # lingering: hold the reply's offer (or none) for the next `ready` (``hold``)
    END_POLL = "end_poll"  # the job assigned was canceled or lost before it was sent
    CHECK_WATCHED = "check_watched"  # push `cancel` if the watched job is no longer ours


@dataclass(slots=True)
class Session:
    """What one connection is doing; ``job``/``attempt`` are set while IN_FLIGHT."""

    state: State = S.IDLE
    job: str = ""
    attempt: int = 0
    poll: int = 0  # increases with every poll, so a stale poll timer can tell it is stale
    sent: tuple[str, int] = ("", 0)  # the last job and attempt sent: never sent twice
    closed: bool = False
    rang: bool = False  # a doorbell came while `ready` was being answered
    # The job the runner record held when this connection opened: the runner may still be
    # executing it before it re-attaches with `running`, so a cancel must reach it meanwhile.
    prior: tuple[str, int] | None = None
    # While LINGERING: a job assigned meanwhile (the answer to the next `ready`), and whether the
    # runner is still in the idle sets (False once something took it out).
    held_offer: Offer | None = None
    listed: bool = True
    # how much `log` data this connection may still send before the pod reads it more slowly
    log_budget: LogBudget = field(default_factory=LogBudget)

    # -- the table ------------------------------------------------------------------------------

    def fire(self, event: Event) -> State:
        """Apply ``event``; raise ProtocolError(1008) when the runner may not do this now."""
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            reason = _RUNNER_FAULTS.get((self.state, event))
            if reason is None:  # our own bug, not the runner's
                raise RuntimeError(f"no transition for {event.value} in {self.state.value}")
            raise ProtocolError(closecodes.POLICY_VIOLATION, reason)
        if event is E.READY:
            self.poll += 1
        if nxt is not S.IN_FLIGHT:
            self.job, self.attempt = "", 0
        self.state = nxt
        return nxt

    def start_job(self, job: str, attempt: int, event: Event) -> None:
        """A job becomes this connection's job in flight (``SEND_JOB`` or ``RUNNING``)."""
        self.fire(event)
        self.job, self.attempt = job, attempt
        if event is E.SEND_JOB:
            self.sent = (job, attempt)
        else:
            self.prior = None

    # -- inputs with flags ------------------------------------------------------------------------

    def attached(self, job: str, attempt: int | None) -> None:
        """The connection was recorded; the runner record held ``job`` (rule 1) or ''."""
        self.prior = (job, int(attempt or 0)) if job else None

    def ready(self) -> ReadyPlan:
        """The runner sent `ready` (1008 when a poll or a job is open)."""
        lingering = self.state is S.LINGERING
        self.fire(E.READY)
        self.rang = False
        self.prior = None  # rule 1: the ready script ends any attempt the record still holds
        if not lingering or (self.held_offer is None and not self.listed):
            return ReadyPlan.ASK_REDIS
        return ReadyPlan.SEND_HELD if self.held_offer is not None else ReadyPlan.WAIT

    def take_held(self) -> Offer | None:
        offer, self.held_offer = self.held_offer, None
        return offer

    def wait(self) -> bool:
        """The poll is open (the ready script found nothing). True: a bell came meanwhile and
        the driver must observe now."""
        self.fire(E.WAIT)
        return self.rang

    def released(self, job: str, attempt: int) -> None:
        """That attempt, assigned to this connection but never sent, went back to the queue: it
        is never sent here (its match's bell may still be on the way while the runner polls
        again, and the job may meanwhile be another runner's; a new claim is a new attempt)."""
        self.sent = (job, attempt)

    def begin_delivery(self, offer: Offer) -> bool:
        """A `job` frame is about to be sent; False when this connection was sent it already."""
        if self.sent == (offer.job, offer.attempt):
            return False
        self.start_job(offer.job, offer.attempt, E.SEND_JOB)
        return True

    def polling(self, poll: int) -> bool:
        """Whether poll number ``poll`` is still the open one (a timer may be stale)."""
        return not self.closed and self.state is S.POLLING and self.poll == poll

    def lingering(self, poll: int) -> bool:
        return not self.closed and self.state is S.LINGERING and self.poll == poll

    def linger(self) -> None:
        """The poll ended with `no_job`; the runner stays in the idle sets for a while."""
        self.fire(E.LINGER)
        self.held_offer, self.listed = None, True

    def end_linger(self) -> None:
        self.fire(E.LINGER_END)
        self.held_offer = None

    def job_done(self, job: str, attempt: int) -> None:
        """That attempt ended (terminal recorded or cancel pushed): no longer ours in flight."""
        if self.holds(job, attempt):
            self.fire(E.JOB_DONE)
        if self.prior is not None and self.prior[0] == job:
            self.prior = None

    def log(self) -> bool:
        """The runner sent `log`: whether to store it (Redis fences it) or drop it silently
        without a Redis call (rule 9). Never changes the state and is never answered."""
        self.fire(E.LOG)
        return self.state in LOG_STORED_IN

    def log_wait(self, size: int, now: float, rate: float) -> float:
        """Seconds to wait before reading this connection's next frame, ``size`` bytes of
        `log` data having come at ``now`` (DISPATCHER_LOG_RATE bytes/s; 0 = no limit)."""
        return self.log_budget.charge(size, now, rate)

    def check_running(self) -> None:
        """`running` is refused (1008) while a poll is open; Redis fences it otherwise."""
        if self.state in (S.POLLING, S.READYING):
            self.fire(E.RUNNING)

    def close(self) -> bool:
        """The pod closes the connection; False when it was closed already."""
        if self.closed:
            return False
        self.closed = True
        return True

    # -- decisions --------------------------------------------------------------------------------

    def rung(self, bell: Bell, conn: int) -> BellAction:
        """A bell for this runner reached the connection of generation ``conn``."""
        if bell.offer is None or self.closed or bell.conn != conn:
            return BellAction.OBSERVE  # an older generation's bell is never sent on a newer one
        if self.sent == (bell.job, bell.attempt):
            return BellAction.DONE  # the reconcile sent it first
        return BellAction.SEND if self.state is S.POLLING else BellAction.OBSERVE

    def observed(
        self, *, exists: bool, current: bool, offer: bool, polling: bool, pubsub: bool
    ) -> Observed:
        """What an ``observe`` reply means here: the runner record ``exists``, names this
        connection (``current``), holds an unsent ``offer``, is in the idle sets (``polling``);
        ``pubsub``: the pod is in pub/sub mode. Flags change here (``rang``, the linger's)."""
        if not exists:
            return Observed.CLOSE_REVOKED
        if not current:
            return Observed.CLOSE_SUPERSEDED
        if self.state is S.READYING:
            self.rang = True  # the ready handler looks again once it knows the outcome
            return Observed.NOTHING
        if self.state is S.LINGERING:
            self.listed = polling
            return Observed.HOLD
        if self.state is S.POLLING and offer:
            return Observed.SEND
        if self.state is S.POLLING and not polling and pubsub:
            return Observed.END_POLL
        return Observed.CHECK_WATCHED

    def hold(self, offer: Offer | None) -> None:
        """While LINGERING: the job assigned meanwhile (None: none any more)."""
        self.held_offer = offer

    def holds(self, job: str, attempt: int) -> bool:
        """Whether this exact attempt is the connection's job in flight."""
        return self.state is S.IN_FLIGHT and (self.job, self.attempt) == (job, attempt)

    def watched_job(self) -> tuple[str, int] | None:
        """The job whose cancellation this connection must push: in flight, or held before."""
        if self.state is S.IN_FLIGHT:
            return self.job, self.attempt
        return self.prior

    def releases_on_detach(self) -> bool:
        return self.state in RELEASE_ON_DETACH
