"""Rolling restarts behind HAProxy, as real processes (issue 13).

The world (``RollingWorld``): HAProxy on a free port with the example config rendered for this
run (``tests.scaleout.haproxykit``), 3 ``dispatcher serve`` pods and 2 ``worker-bridge`` writers
on one Redis namespace, a few real ``dispatch-runner`` agents and many simulated runners
(``tests.scaleout.rollsim``, one process) all connecting through HAProxy, and a producer thread
submitting a steady load of jobs of varied lengths (some long enough to span a restart).

``run`` loads it, restarts pod 1, 2, 3 in turn (SIGTERM, wait for the exit, start again on the
same port, wait for /readyz, for HAProxy to mark it UP and for every runner to be connected
again), keeps the load on a while, then waits for every job to be final and counts
(``tests.scaleout.rolltally``). Used by ``tests/scaleout/test_rolling.py`` (CI size) and
``python -m bench.rolling`` (300 runners).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from dispatcher import functions
from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from dispatcher.tokens import new_token, token_hash
from runner.config import TOKEN_ENV
from tests.faults.cluster import MARK_ENV, Proc, _bin, free_port, job_processes, wait_for
from tests.scaleout import haproxykit
from tests.scaleout.rolltally import Execution, Submitted, Tally, tally

SPEC = "rolling"
POD_COUNT = 3


@dataclass(frozen=True)
class RollSize:
    runners: int  # all of them, agents included
    agents: int  # real dispatch-runner processes among them
    rate: float  # jobs submitted per second
    job_seconds: tuple[float, ...]  # job lengths, in turn
    before: float  # seconds of load before the first SIGTERM
    after: float  # seconds of load after the roll
    settle: float = 120.0  # bound on every job reaching a final status

    @classmethod
    def named(cls, name: str, runners: int | None = None) -> RollSize:
        if name == "soak":
            size = cls(300, 12, 40.0, (0.2, 0.5, 1.0, 3.0, 8.0), before=10.0, after=10.0)
        else:
            size = cls(60, 4, 10.0, (0.2, 0.5, 1.0, 4.0), before=3.0, after=3.0)
        if runners is not None:
            size = RollSize(
                runners, min(size.agents, runners), size.rate * runners / size.runners,
                size.job_seconds, size.before, size.after, size.settle,
            )  # fmt: skip
        return size


@dataclass
class Restart:
    """One pod's restart, in ``time.time()`` seconds."""

    pod: str
    connections: int  # runner connections HAProxy had open to it at the SIGTERM
    sigterm: float
    exited: float = 0.0
    exit_code: int | None = None
    ready: float = 0.0  # /readyz 200 again
    lb_up: float = 0.0  # HAProxy marks it UP
    all_connected: float = 0.0  # every runner connected to a live pod again

    def summary(self) -> str:
        return (
            f"{self.pod}: {self.connections} runners; exit {self.exit_code} after "
            f"{self.exited - self.sigterm:.1f} s, ready +{self.ready - self.sigterm:.1f} s, "
            f"UP in HAProxy +{self.lb_up - self.sigterm:.1f} s, every runner connected "
            f"+{self.all_connected - self.sigterm:.1f} s"
        )


@dataclass
class Outcome:
    tally: Tally
    restarts: list[Restart]
    roll: tuple[float, float]
    sim: dict[str, Any]  # tests.scaleout.rollsim.Record as JSON
    sessions_after: dict[str, int]  # HAProxy's open connections per pod at the end
    runners: int
    lb_changes: list[tuple[float, str, str, str]]  # (time, pod, old, new) HAProxy status
    lb_retries: dict[str, int]  # the backend's connection retries and redispatches

    def lb_lines(self) -> list[str]:
        """HAProxy's view of the roll: each status change, relative to that pod's SIGTERM."""
        sigterm = {r.pod: r.sigterm for r in self.restarts}
        lines = [
            f"HAProxy: {pod} {old} -> {new} at SIGTERM+{at - sigterm.get(pod, at):.1f} s"
            for at, pod, old, new in self.lb_changes
        ]
        retried = self.lb_retries
        lines.append(
            f"HAProxy: {retried['retries']} connection retries, "
            f"{retried['redispatches']} redispatched to another pod"
        )
        return lines


class Producer:
    """Submits jobs at ``rate`` from a thread until ``stop``; each with its own id and ``t0``."""

    def __init__(self, world: RollingWorld) -> None:
        self.world = world
        self.submitted: list[Submitted] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        size = self.world.size
        client = Client(self.world.settings)
        try:
            started, n = time.monotonic(), 0
            while not self._stop.is_set():
                seconds = size.job_seconds[n % len(size.job_seconds)]
                job_id, t0 = str(uuid.uuid4()), time.time()
                try:
                    client.submit(SPEC, self.world.payload(seconds, t0), timeout=120, job_id=job_id)
                    self.submitted.append(Submitted(job_id, t0, seconds))
                except redis.RedisError as exc:  # counted: a submit that fails is a finding
                    self.errors.append(f"{job_id}: {exc}")
                n += 1
                self._stop.wait(max(0.0, started + n / size.rate - time.monotonic()))
        finally:
            client.close()


@dataclass
class RollingWorld:
    """Everything of one run; ``start`` brings it up, ``close`` takes all of it down."""

    root: Path
    size: RollSize
    redis_url: str
    namespace: str = field(default_factory=lambda: "roll" + uuid.uuid4().hex[:10])
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    pods: list[Proc] = field(default_factory=list)
    pod_ports: list[int] = field(default_factory=list)
    writers: list[Proc] = field(default_factory=list)
    agents: list[Proc] = field(default_factory=list)
    sim: Proc | None = None
    haproxy: Proc | None = None
    lb_port: int = field(default_factory=free_port)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    @property
    def settings(self) -> Settings:
        return Settings(redis_url=self.redis_url, namespace=self.namespace)

    @property
    def stats_socket(self) -> Path:
        return self.root / "admin.sock"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.txt"

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH")}
        return {
            **base,
            "DISPATCHER_REDIS_URL": self.redis_url,
            "DISPATCHER_NAMESPACE": self.namespace,
            "DISPATCHER_TRUSTED_PROXIES": "127.0.0.1/32",  # X-Forwarded-For from HAProxy
        }

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=10)

    def payload(self, seconds: float, t0: float) -> dict[str, Any]:
        """Runs on an agent (``script``, which writes the ledger) or a simulated runner
        (``seconds``); ``t0`` is the submit time."""
        line = '"$DISPATCH_JOB_ID" "$DISPATCH_JOB_ATTEMPT" "$(date +%s.%N)"'
        script = f"printf 'start %s %s %s\\n' {line} >> '{self.ledger}'\nsleep {seconds}\n"
        return {"script": script, "env": {MARK_ENV: self.mark}, "seconds": seconds, "t0": t0}

    # -- bringing it up -------------------------------------------------------------------------

    def start(self) -> None:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.ledger.touch()
        names = [f"r{i:03d}" for i in range(self.size.runners)]
        with self.redis() as client:
            functions.load_library_sync(client)
            for name in names:
                self.tokens[name] = token = new_token()
                call = functions.runner_add(self.keys, name, token_hash(token), [SPEC])
                functions.run_sync(client, call)
        for i in range(POD_COUNT):
            port = free_port()
            self.pod_ports.append(port)
            argv = [_bin("dispatcher"), "serve", "--host", "127.0.0.1", "--port", str(port)]
            self.pods.append(Proc(f"pod{i + 1}", argv, self.env(), logs / f"pod{i + 1}.log"))
        for i in range(2):
            argv = [_bin("worker-bridge"), "--log-level", "WARNING"]
            self.writers.append(Proc(f"writer{i}", argv, self.env(), logs / f"writer{i}.log"))
        for proc in [*self.pods, *self.writers]:
            proc.start()
        wait_for(lambda: all(map(self.pod_ready, self.pod_ports)), 60, "pods ready")
        self.start_haproxy()
        self.start_runners(names)
        wait_for(self.every_runner_connected, 120, "every runner connected", interval=0.2)

    def start_haproxy(self) -> None:
        config = haproxykit.write_config(self.root, self.lb_port, self.pod_ports)
        argv = ["haproxy", "-db", "-f", str(config)]
        self.haproxy = Proc("haproxy", argv, dict(os.environ), self.root / "logs" / "haproxy.log")
        self.haproxy.start()
        wait_for(self.lb_sees_all_up, 60, "HAProxy to mark every pod UP", interval=0.1)

    def start_runners(self, names: list[str]) -> None:
        url = f"http://127.0.0.1:{self.lb_port}"
        logs = self.root / "logs"
        for name in names[: self.size.agents]:
            environ = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH")}
            environ[TOKEN_ENV] = self.tokens[name]
            argv = [
                _bin("dispatch-runner"), "--url", url, "--runner", name,
                "--state-dir", str(self.root / "state"), "--kill-grace", "1",
            ]  # fmt: skip
            agent = Proc(name, argv, environ, logs / f"agent-{name}.log", signal.SIGTERM)
            self.agents.append(agent)
            agent.start()
        simulated = names[self.size.agents :]
        config = {
            "url": url,
            "runners": [[n, self.tokens[n]] for n in simulated],
            "out": str(self.root / "sim.json"),
            "spread": 0.005,
        }
        (self.root / "sim-config.json").write_text(json.dumps(config))
        argv = [sys.executable, "-m", "tests.scaleout.rollsim", str(self.root / "sim-config.json")]
        self.sim = Proc("sim", argv, self.env(), logs / "sim.log", signal.SIGTERM)
        self.sim.start()

    # -- what is up -----------------------------------------------------------------------------

    def pod_ready(self, port: int) -> bool:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def lb_states(self) -> dict[str, str]:
        try:
            return haproxykit.server_states(self.stats_socket)
        except OSError:
            return {}

    def lb_sees_all_up(self) -> bool:
        if self.haproxy is None or not self.haproxy.alive():
            tail = self.haproxy.tail() if self.haproxy else ""
            raise AssertionError(f"haproxy is not running:\n{tail}")
        states = self.lb_states()
        return len(states) == POD_COUNT and all(s == "UP" for s in states.values())

    def every_runner_connected(self) -> bool:
        """Every runner's record names a pod that is in the live pod set."""
        with self.redis() as client:
            live = set(client.zrange(self.keys.pods, 0, -1))
            pipe = client.pipeline(transaction=False)
            for name in self.tokens:
                pipe.hget(self.keys.runner(name), "pod")
            return all(pod in live for pod in pipe.execute())

    # -- the roll -------------------------------------------------------------------------------

    def restart_pod(self, index: int) -> Restart:
        pod, name = self.pods[index], haproxykit.server_name(index)
        held = haproxykit.server_sessions(self.stats_socket).get(name, 0)
        restart = Restart(name, held, time.time())
        pod.send(signal.SIGTERM)
        assert pod.popen is not None
        restart.exit_code = pod.popen.wait(60)
        restart.exited = time.time()
        pod.start()
        port = self.pod_ports[index]
        wait_for(lambda: self.pod_ready(port), 60, f"{name} ready again")
        restart.ready = time.time()
        wait_for(lambda: self.lb_states().get(name) == "UP", 60, f"HAProxy: {name} UP")
        restart.lb_up = time.time()
        wait_for(self.every_runner_connected, 60, "every runner reconnected", interval=0.1)
        restart.all_connected = time.time()
        return restart

    def run(self) -> Outcome:
        producer = Producer(self)
        producer.start()
        watch = haproxykit.StateWatch(self.stats_socket)
        watch.start()
        restarts: list[Restart] = []
        try:
            time.sleep(self.size.before)  # load shape: the roll hits a system in full flow
            roll_start = time.time()
            restarts = [self.restart_pod(i) for i in range(POD_COUNT)]
            roll_end = time.time()
            time.sleep(self.size.after)  # load shape: the roll's aftermath under load
        finally:
            producer.stop()
            watch.stop()
        ids = [s.job for s in producer.submitted]
        with contextlib.suppress(AssertionError):
            wait_for(lambda: self.all_final(ids), self.size.settle, "every job final", 0.25)
        records = self.job_records(ids)
        sessions = haproxykit.server_sessions(self.stats_socket)  # while every runner is on
        lb_retries = haproxykit.retries(self.stats_socket)
        sim = self.stop_sim()
        result = tally(producer.submitted, records, self.executions(sim), (roll_start, roll_end))
        result.details.extend(f"submit failed: {e}" for e in producer.errors)
        return Outcome(
            result,
            restarts,
            (roll_start, roll_end),
            sim,
            sessions,
            self.size.runners,
            watch.changes,
            lb_retries,
        )

    # -- counting -------------------------------------------------------------------------------

    def job_records(self, ids: list[str]) -> dict[str, dict[str, str]]:
        fields = ("status", "attempt", "exit_code", "error")
        with self.redis() as client:
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self.keys.job(job_id), *fields)
            replies = pipe.execute()
        return {
            job_id: {f: v for f, v in zip(fields, reply, strict=True) if v is not None}
            for job_id, reply in zip(ids, replies, strict=True)
        }

    def all_final(self, ids: list[str]) -> bool:
        final = ("processed", "failed", "canceled")
        return all(r.get("status") in final for r in self.job_records(ids).values())

    def stop_sim(self) -> dict[str, Any]:
        """SIGTERM the simulated runners; what they recorded (written whole as they exit)."""
        sim = self.sim
        assert sim is not None
        out = self.root / "sim.json"
        sim.send(signal.SIGTERM)
        wait_for(lambda: not sim.alive(), 60, "the simulated runners to exit")
        wait_for(out.exists, 5, "the simulated runners' record")
        data: dict[str, Any] = json.loads(out.read_text())
        return data

    def executions(self, sim: dict[str, Any]) -> list[Execution]:
        out = [Execution(job, int(attempt), who, t) for job, attempt, who, t in sim["starts"]]
        for line in self.ledger.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "start":
                with contextlib.suppress(ValueError):
                    out.append(Execution(parts[1], int(parts[2]), "agent", float(parts[3])))
        return out

    # -- taking it down -------------------------------------------------------------------------

    def close(self) -> None:
        for proc in [*self.agents, *([self.sim] if self.sim else [])]:
            proc.stop(signal.SIGTERM, timeout=10)
        for proc in [*self.writers, *self.pods]:
            proc.stop(signal.SIGTERM, timeout=10)
        if self.haproxy is not None:
            self.haproxy.stop(signal.SIGTERM, timeout=10)
        for pid in job_processes(self.mark):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
