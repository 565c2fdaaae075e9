"""A dispatcher pod: its runner sockets, its doorbell, its reconcile and reaper tick.

Theory of operation: the pod keeps only what it can rebuild (its sockets and what each is doing).
Whenever Redis may have changed something about one of its runners (a job assigned, a job
canceled or lost, a newer connection elsewhere, a revoked token), a Redis function has added the
runner to this pod's inbox and rung the pod's bell channel. ``observe`` reads the runner's state
back from Redis (removing it from the inbox first) and makes the socket agree: send the `job`,
push `cancel`, or close. A match's bell carries the offer and the connection generation it was
made for: when that generation's socket is here and in its long poll, the pod sends the `job` at
once, and the runner's `running` empties the inbox entry (``start`` checks the connection, job
and attempt are still what the pod holds); anything else goes to ``observe``.
The bell is only the fast path; the tick re-reads the inbox every ``reconcile_interval`` and after
every (re)subscribe, so a lost message costs latency only. A connection never gets the same job
and attempt twice (``Session.sent``), whichever of the bell and the reconcile comes first.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from typing import Any

import redis
import redis.asyncio

from dispatch_protocol import closecodes
from dispatcher import functions, hotlane, redisconn
from dispatcher.durability import Durability
from dispatcher.keys import Keys
from dispatcher.pod.bells import Bell, Offer
from dispatcher.pod.doorbell import PROBE, Doorbell
from dispatcher.pod.longpoll import LongPolls
from dispatcher.pod.session import BellAction, Observed
from dispatcher.pod.sockets import RunnerSocket
from dispatcher.pod.sweeps import SweepSchedule, TickKind, max_sweep_every
from dispatcher.podmetrics import PodMetrics
from dispatcher.results import PumpConfig, PumpLoop
from dispatcher.settings import Settings

log = logging.getLogger(__name__)

STOP_WAIT = 2.0
# after a retry's due time: Redis's clock decides, and the pod's may run a little ahead
SWEEP_MARGIN = 0.005
PROBE_EVERY_TICKS = 10  # a doorbell probe every 10 reconcile intervals (10 s by default)
IN_FLIGHT = frozenset({"claimed", "running"})
REDIS_POOL_SIZE = 64  # connections per pod; more would not make one Redis any faster
REDIS_POOL_TIMEOUT = 10.0  # s a command may wait for a free connection before it fails
# True in the observe tasks the tick spawns for the inbox: a delivery there is a doorbell recovery
VIA_TICK: contextvars.ContextVar[bool] = contextvars.ContextVar("via_tick", default=False)


class Pod:
    """Everything one dispatcher process does besides serving HTTP."""

    def __init__(self, settings: Settings, pod_id: str | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.id = pod_id or uuid.uuid4().hex[:16]
        # A burst (a thousand runners connecting, or their long polls ending in the same second)
        # must queue for a connection, not fail: redis-py's default pool raises past 100 in use.
        self.redis = redisconn.async_client(settings.redis_url, REDIS_POOL_SIZE, REDIS_POOL_TIMEOUT)
        # the runner channel's function calls, pipelined on one connection (``hotlane``)
        self.calls = hotlane.lane_for(settings.redis_url, self.redis)
        self._sync_redis = redisconn.sync_client(settings.redis_url)  # the pump's (rq is sync)
        # the rq queues' own Redis (DISPATCHER_RESULTS_REDIS_URL), when they are not in ours
        self._rq_redis = (
            redisconn.sync_client(settings.results_redis_url)
            if settings.results_redis_url
            else None
        )
        self.pump = PumpLoop(
            self._sync_redis,
            self.keys,
            PumpConfig.from_settings(settings),
            lambda: self._stopped,
            self._rq_redis,
            on_pump=lambda result: self.metrics.pumped(result),
        )
        self.durability = Durability.parse(settings.ack_durability)
        self.metrics = PodMetrics()  # served on the admin port (dispatcher.adminserver)
        self.sockets: dict[str, RunnerSocket] = {}
        self.polls = LongPolls(self)
        self.doorbell = Doorbell(
            settings,
            self.keys.pod_channel(self.id),
            self._on_bell,
            self._on_subscribed,
            lambda: self._stopped,
        )
        self._observing: dict[str, bool] = {}
        # runners with an attach call in flight here, and those of them a bell was observed for
        # before their socket was registered (the attach then observes once more)
        self._attaching: dict[str, int] = {}
        self._missed: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.stopping = False
        self._stopped = False
        self._joined = False
        self._doorbell_task: asyncio.Task[None] | None = None
        self.sweeps = SweepSchedule(max_sweep_every(settings.pod_ttl, settings.reconcile_interval))
        self.metrics.watch(self)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the library, publish the timeouts the scripts use, join the pod set."""
        await functions.load_library(self.redis)
        await self.durability.check(self.redis)
        cfg: dict[str | bytes, float] = {
            "start_timeout": self.settings.start_timeout,
            "lease_timeout": self.settings.lease_timeout,
            "timeout_grace": self.settings.timeout_grace,
            "group_default_limit": self.settings.group_default_limit,
        }
        await self.redis.hset(self.keys.config, mapping=cfg)  # type: ignore[arg-type]
        await self.redis.set(self.keys.schema, 1, nx=True)
        if isinstance(self.calls, hotlane.HotLane):
            await self.calls.connect()
        await self.tick()
        if self.settings.wake == "pubsub":
            self._doorbell_task = asyncio.create_task(self.doorbell.run(), name="doorbell")
            self._tasks.append(self._doorbell_task)
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="tick"))
        self._tasks.append(asyncio.create_task(self.pump.run(), name="pump"))

    async def close_sockets(self) -> None:
        """Refuse new channels and close every open one with 1001; jobs keep their leases."""
        self.stopping = True
        sockets = list(self.sockets.values())
        await asyncio.gather(
            *(s.close(closecodes.GOING_AWAY, "dispatcher pod shutting down") for s in sockets),
            return_exceptions=True,
        )
        for sock in sockets:
            await self.detach(sock)

    async def stop(self) -> None:
        """Close what is still open and leave the pod set (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        await self.close_sockets()
        for task in self._tasks:
            task.cancel()
        # bounded: a cancellation lost inside redis-py's timeout wrapper (CPython gh-86296) must
        # not hang the shutdown; the loops also stop on their own once they see _stopped
        for task in self._background:
            task.cancel()
        pending = [*self._tasks, *self._background]
        if pending:
            await asyncio.wait(pending, timeout=STOP_WAIT)
        try:
            await functions.run(self.redis, functions.pod_stop(self.keys, self.id))
        except redis.RedisError as exc:
            log.warning("could not leave the pod set: %s", exc)
        if isinstance(self.calls, hotlane.HotLane):
            await self.calls.aclose()
        await self.redis.aclose()
        self._sync_redis.close()
        if self._rq_redis is not None:
            self._rq_redis.close()

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends; its failure is
        logged here (a Redis error only costs latency: the next tick observes again)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, (redis.RedisError, OSError)):
            self.metrics.redis_errors.labels("background").inc()
            log.warning("pod %s: background call failed (%s); the next tick retries", self.id, exc)
        else:
            log.error("pod %s: background task failed", self.id, exc_info=exc)

    async def ready(self) -> bool:
        """Redis answers and (in pub/sub mode) the doorbell subscription is live."""
        try:
            await self.redis.ping()
        except redis.RedisError:
            return False
        return self.settings.wake == "poll" or self.doorbell.live

    # -- sockets ------------------------------------------------------------------------------

    async def attach(self, runner: str, ws: Any) -> RunnerSocket:
        """Record a new connection of ``runner`` here; a previous one is superseded (4002)."""
        self._attaching[runner] = self._attaching.get(runner, 0) + 1
        try:
            reply = await functions.run(self.calls, functions.attach(self.keys, runner, self.id))
        finally:
            self._attaching[runner] -= 1
            if not self._attaching[runner]:
                del self._attaching[runner]
        if runner in self._missed and runner not in self._attaching:
            # a newer connection elsewhere may have rung for this one before it was registered
            # (that observe found no socket and took the runner out of the inbox): look again
            self._missed.discard(runner)
            self.spawn(self.observe(runner))
        sock = RunnerSocket(runner, int(reply["conn"]), ws)
        sock.session.attached(reply.get("job") or "", reply.get("attempt"))
        old = self.sockets.get(runner)
        if old is not None and old.conn > sock.conn:
            # two handshakes raced and the newer one registered first: this one is the old one
            await sock.close(closecodes.SUPERSEDED, "superseded by a newer connection")
            return sock
        self.sockets[runner] = sock
        if old is not None:
            await old.close(closecodes.SUPERSEDED, "superseded by a newer connection")
        return sock

    async def detach(self, sock: RunnerSocket) -> None:
        sock.cancel_poll_timer()
        if self.sockets.get(sock.runner) is sock:
            del self.sockets[sock.runner]
        try:
            if sock.session.releases_on_detach():
                # a job assigned but not sent yet goes back to the queue at once, instead of
                # waiting out its start deadline
                call = functions.poll_end(self.keys, sock.runner, sock.conn, release=True)
                await functions.run(self.calls, call)
            await functions.run(
                self.calls, functions.detach(self.keys, sock.runner, self.id, sock.conn)
            )
        except redis.RedisError as exc:
            log.warning("detach of %s failed (its pod entry expires): %s", sock.runner, exc)

    async def deliver(self, sock: RunnerSocket, offer: Offer) -> None:
        """Send an assigned job; the connection now has it in flight. A job and attempt this
        connection was sent already is not sent again."""
        if not self._begin_delivery(sock, offer):
            return
        recovery = VIA_TICK.get() and self.settings.wake == "pubsub"
        await self._send_job(sock, offer, recovery)

    def _begin_delivery(self, sock: RunnerSocket, offer: Offer) -> bool:
        # synchronous, so whichever of a bell and an observe comes second sees IN_FLIGHT
        if not sock.session.begin_delivery(offer):
            log.debug("%s: job %s/%d already sent", sock.runner, offer.job, offer.attempt)
            return False
        sock.cancel_poll_timer()
        return True

    async def _send_job(self, sock: RunnerSocket, offer: Offer, recovery: bool) -> None:
        await sock.send(offer.message(self.settings.heartbeat_interval))
        self.metrics.delivered(offer.created)
        self.metrics.sent(sock, offer.job, offer.attempt, recovery)

    # -- doorbell and reconcile ----------------------------------------------------------------

    def _on_bell(self, bell: Bell) -> None:
        if not self._deliver_rung(bell):
            self.spawn(self.observe(bell.runner))

    def _deliver_rung(self, bell: Bell) -> bool:
        """Send the offer a match's bell carries, when the connection it was made for is here
        and in its long poll; the inbox is reconciled after the send. False: ``observe``."""
        sock = self.sockets.get(bell.runner)
        if sock is None or bell.offer is None:
            return False
        action = sock.session.rung(bell, sock.conn)
        if action is BellAction.SEND and self._begin_delivery(sock, bell.offer):
            # no observe after it: the runner's `running` settles the inbox entry (``start``),
            # news after the bell rings again, a runner that never starts it is left to the tick
            self.spawn(self._send_job(sock, bell.offer, recovery=False))
        return action is not BellAction.OBSERVE

    async def _on_subscribed(self) -> None:
        await self.reconcile()

    async def observe(self, runner: str) -> None:
        """Make ``runner``'s socket agree with Redis. Concurrent calls for one runner coalesce."""
        if runner in self._observing:
            self._observing[runner] = True
            return
        self._observing[runner] = False
        try:
            while True:
                await self._observe_once(runner)
                if not self._observing[runner]:
                    break
                self._observing[runner] = False
        finally:
            del self._observing[runner]

    async def _observe_once(self, runner: str) -> None:
        sock = self.sockets.get(runner)
        watched = sock.session.watched_job() if sock is not None else None
        local_job = watched[0] if watched else ""
        reply = await functions.run(
            self.calls, functions.observe(self.keys, self.id, runner, local_job)
        )
        if self.sockets.get(runner) is not sock:
            # a connection was attached (or replaced) here while the call ran: the call took the
            # runner out of the inbox, so nothing would ring again for it; look again for that one
            self._observing[runner] = True
            return
        if sock is None and runner in self._attaching:
            self._missed.add(runner)  # the attach observes again once its socket is registered
        if sock is None or sock.closed:
            return
        offer = Offer.from_reply(reply["offer"]) if reply.get("offer") else None
        action = sock.session.observed(
            exists=bool(reply["exists"]),
            current=str(reply["conn"]) == str(sock.conn),
            offer=offer is not None,
            polling=bool(reply.get("polling")),
            pubsub=self.settings.wake == "pubsub",
        )
        if action is Observed.CLOSE_REVOKED:
            if watched:  # an ephemeral runner's job ended with its registration: say so first
                await self._check_watched(sock, watched, reply.get("local") or {})
            await sock.close(closecodes.REVOKED, "runner token revoked")
        elif action is Observed.CLOSE_SUPERSEDED:
            await sock.close(closecodes.SUPERSEDED, "superseded by a newer connection")
        elif action is Observed.HOLD:
            sock.session.hold(offer)
        elif action is Observed.SEND and offer is not None:
            await self.deliver(sock, offer)
        elif action is Observed.END_POLL:
            # a job assigned to the runner was canceled or lost before it was sent: the runner
            # left the idle sets then; end its poll now (`no_job`) so it asks again at once
            await self.polls.end(sock, sock.session.poll)
        elif action is Observed.CHECK_WATCHED and watched and sock.session.watched_job() == watched:
            await self._check_watched(sock, watched, reply.get("local") or {})

    async def _check_watched(
        self, sock: RunnerSocket, watched: tuple[str, int], job: dict[str, Any]
    ) -> None:
        """Push `cancel` when the connection's job was canceled or its attempt was lost."""
        job_id, attempt = watched
        ours = job.get("runner") == sock.runner and job.get("attempt") == attempt
        status = job.get("status", "")
        if ours and status in IN_FLIGHT | {"completed", "processed"}:
            return
        reason = job.get("cancel_reason") if ours and status == "canceled" else "lease_lost"
        if reason not in ("canceled", "timeout"):
            reason = "lease_lost"
        await sock.push_cancel(job_id, attempt, reason)

    async def reconcile(self) -> None:
        """Tick once now (used after every (re)subscribe)."""
        await self.tick()

    async def tick(self, kind: TickKind = TickKind.DEEP) -> None:
        """Read the inbox and look at every runner in it; a sweep also renews presence, reaps
        due leases and releases due retries, a deep one reaps dead pods and pumps any backlog
        (``dispatcher.pod.sweeps``)."""
        if kind is TickKind.INBOX:
            names = await self.redis.smembers(self.keys.pod_inbox(self.id))
            inbox = [n.decode() if isinstance(n, bytes) else n for n in names]
            reply: dict[str, Any] = {"inbox": inbox}
        else:
            ttl_ms = int(self.settings.pod_ttl * 1000)
            call = functions.tick(self.keys, self.id, ttl_ms, deep=kind is TickKind.DEEP)
            reply = await functions.run(self.redis, call)
        self.metrics.ticked(reply)
        if "pods" in reply:
            self.sweeps.counted(int(reply["pods"]))
        if reply.get("rejoined") and self._joined:
            # another pod's tick found our presence lapsed (Redis failover, a stalled pod) and
            # detaches our runners: make them reconnect so their records name a live pod again
            log.warning(
                "pod %s lost its presence; closing its channels so runners reconnect", self.id
            )
            self.metrics.presence_lost.inc()
            for sock in list(self.sockets.values()):
                self.spawn(sock.close(closecodes.GOING_AWAY, "dispatcher pod lost its presence"))
        if kind is not TickKind.INBOX:
            self._joined = True
        for job_id, outcome, attempt in reply.get("reaped") or []:
            log.info("reaped job %s attempt %s: %s", job_id, attempt, outcome)
        if int(reply.get("backlog") or 0) > 0:
            self.wake_pump()
        via_tick = VIA_TICK.set(True)  # the tasks spawned here copy it
        try:
            for runner in reply.get("inbox") or []:
                self.spawn(self.observe(runner))
        finally:
            VIA_TICK.reset(via_tick)

    def sweep_at(self, delay: float) -> None:
        """Sweep in ``delay`` s: a delayed retry this pod scheduled is due then (any pod's
        periodic sweep would release it too, up to two intervals later)."""
        asyncio.get_running_loop().call_later(delay + SWEEP_MARGIN, self._sweep_soon)

    def _sweep_soon(self) -> None:
        if not self._stopped:  # a failure is logged and counted by spawn; the next sweep retries
            self.spawn(self.tick(TickKind.SWEEP))

    async def _tick_loop(self) -> None:
        ticks = 0
        while not self._stopped:
            await asyncio.sleep(self.settings.reconcile_interval)
            ticks += 1
            try:
                await self.tick(self.sweeps.next())
                if self.settings.wake == "pubsub" and ticks % PROBE_EVERY_TICKS == 0:
                    await self._probe_doorbell()
            except redis.RedisError as exc:
                self.metrics.redis_errors.labels("tick").inc()
                log.warning("tick failed: %s", exc)
            except Exception:  # the tick keeps the pod alive in Redis: never let it die
                log.exception("tick failed")

    async def _probe_doorbell(self) -> None:
        """Publish a probe on our own bell; rebuild the subscription if the last one never came
        back (pub/sub can die silently while the connection looks fine, and /readyz with it)."""
        now = asyncio.get_running_loop().time()
        timeout = PROBE_EVERY_TICKS * self.settings.reconcile_interval
        if self.doorbell.probe_overdue(now, timeout):
            log.warning("pod %s: doorbell probe not received; rebuilding the subscription", self.id)
            self.metrics.probe_failures.inc()
            self.doorbell.live = False
            self.doorbell.reset_probe()
            old = self._doorbell_task
            self._doorbell_task = asyncio.create_task(self.doorbell.run(), name="doorbell")
            self._tasks = [t for t in self._tasks if t is not old] + [self._doorbell_task]
            if old is not None:
                old.cancel()
            return
        if self.doorbell.live:
            await self.redis.spublish(self.keys.pod_channel(self.id), PROBE)
            self.doorbell.probe_published(now)

    # -- results pump ---------------------------------------------------------------------------

    def wake_pump(self) -> None:
        """A result was recorded, or the tick saw due outbox entries: pump soon."""
        self.pump.wake()
