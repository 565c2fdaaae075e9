"""The fault suite's world: every part of the system as a real process, on a private Redis.

- a ``redis-server`` of its own (AOF on, ``appendfsync always``: the Redis restart scenario must
  not lose acknowledged writes) on a free port in the run's directory, restartable on the same
  port with the same data;
- ``pods`` x ``dispatcher serve`` and ``writers`` x ``worker-bridge``;
- ``agents`` x ``dispatch-runner``, all reaching the pods through one ``LoadBalancer`` port;
- a ledger file every job appends to: ``start|end JOB ATTEMPT PID UNIX-TIME`` (``Ledger``).

Every process runs in a session of its own (a signal to the test's terminal reaches none of them)
and gets SIGKILL (SIGTERM for agents, which then kill their job) should the test process die
(``PR_SET_PDEATHSIG``). ``close`` kills each one by pid and process group, then every job process
of this run (found by the marker in its environment), however the test ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from dispatcher import functions
from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from dispatcher.tokens import new_token, token_hash
from runner.config import TOKEN_ENV
from tests.faults.lbproxy import LoadBalancer

NAMESPACE = "faults"
SPEC = "faults"
MARK_ENV = "FAULTS_MARK"
FINAL = frozenset({"processed", "failed", "canceled"})
PR_SET_PDEATHSIG = 1
ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# Short timeouts so a fault is over in seconds. The lease is 3 s, a heartbeat every 0.5 s; a
# result batch held by a writer that died is handed out again after 1 s.
POD_ENV = {
    "DISPATCHER_NAMESPACE": NAMESPACE,
    "DISPATCHER_RECONCILE_INTERVAL": "0.2",
    "DISPATCHER_POD_TTL": "1.5",
    "DISPATCHER_START_TIMEOUT": "3",
    "DISPATCHER_LEASE_TIMEOUT": "3",
    "DISPATCHER_HEARTBEAT_INTERVAL": "0.5",
    "DISPATCHER_TIMEOUT_GRACE": "5",
    "DISPATCHER_OUTBOX_VISIBILITY": "1",
    "DISPATCHER_HANDSHAKE_TIMEOUT": "2",
    "DISPATCHER_PING_INTERVAL": "5",
    "DISPATCHER_PING_TIMEOUT": "5",
    "DISPATCHER_CONNECT_RATE": "600",
}


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns a truthy value; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bin(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    return str(script) if script.exists() else name


def _die_with_parent(sig: int) -> Callable[[], None]:
    def apply() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)

    return apply


@dataclass
class Proc:
    """One child process of the run, restartable with the same command."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    death_signal: int = signal.SIGKILL
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    groups: list[int] = field(default_factory=list)  # of every start: killed again by ``stop``

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env={**self.env, "PYTHONPATH": str(ROOT)},  # this working tree's code
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(self.death_signal),
            )
        self.starts += 1
        self.groups.append(self.popen.pid)  # its own session: its pid is its group

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else 0

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill9(self, timeout: float = 10.0) -> None:
        """SIGKILL to its process group (a writer with its rq scheduler), and reap. An agent's
        jobs run in sessions of their own: this does not reach them, as with a real crash."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """``sig``, then SIGKILL to the process group after ``timeout`` s."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            self.send(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        for group in self.groups:  # what is left of this and of earlier starts
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Size:
    """How much of everything one run has: the CI size keeps the suite short, soak is longer."""

    agents: int
    rate: float  # jobs submitted per second while a scenario's load runs
    job_seconds: tuple[float, ...]  # job durations, in turn
    before: float  # seconds of load before the fault
    after: float  # seconds of load after the fault ended
    repeats: int  # how many times a scenario's fault is injected
    settle: float = 60.0  # bound on waiting for every job to end after the load

    @classmethod
    def named(cls, name: str) -> Size:
        if name == "soak":
            return cls(
                agents=48,
                rate=24,
                job_seconds=(0.4, 1.0, 2.0, 0.7),
                before=4,
                after=4,
                repeats=3,
                settle=120,
            )
        return cls(
            agents=24, rate=12, job_seconds=(0.3, 0.8, 1.5, 0.5), before=2.5, after=2, repeats=1
        )


class Ledger:
    """The file every job appends its start and end to; parsed on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def script(self, seconds: float) -> str:
        line = '"$DISPATCH_JOB_ID" "$DISPATCH_JOB_ATTEMPT" $$ "$(date +%s.%N)"'
        return (
            f"printf 'start %s %s %s %s\\n' {line} >> '{self.path}'\n"
            f"sleep {seconds}\n"
            f"printf 'end %s %s %s %s\\n' {line} >> '{self.path}'\n"
        )

    def entries(self) -> list[tuple[str, str, int, int, float]]:
        """(kind, job, attempt, pid, time) of every complete line."""
        out = []
        for raw in self.path.read_text().splitlines():
            parts = raw.split()
            if len(parts) != 5 or parts[0] not in ("start", "end"):
                continue
            with contextlib.suppress(ValueError):
                out.append((parts[0], parts[1], int(parts[2]), int(parts[3]), float(parts[4])))
        return out


def job_processes(mark: str, jobs: set[str] | None = None) -> list[int]:
    """Pids of live processes whose environment carries ``MARK_ENV=mark`` (jobs of this run);
    with ``jobs``, only those of these job ids."""
    needle = f"{MARK_ENV}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone, or not ours to read (a non-dumpable agent)
        if needle not in environ or state in ("Z", "X"):
            continue
        if jobs is not None and not any(f"DISPATCH_JOB_ID={j}".encode() in environ for j in jobs):
            continue
        found.append(int(entry.name))
    return found


@dataclass
class Cluster:
    """Everything of one run. ``start`` brings it up, ``close`` takes all of it down."""

    root: Path
    size: Size
    pod_count: int = 3
    writer_count: int = 2
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    redis_port: int = field(default_factory=free_port)
    redis_proc: Proc | None = None
    pods: list[Proc] = field(default_factory=list)
    pod_ports: list[int] = field(default_factory=list)
    writers: list[Proc] = field(default_factory=list)
    agents: list[Proc] = field(default_factory=list)
    lb: LoadBalancer | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def keys(self) -> Keys:
        return Keys(NAMESPACE)

    @property
    def settings(self) -> Settings:
        return Settings(redis_url=self.url, namespace=NAMESPACE)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
        return {**base, **POD_ENV, "DISPATCHER_REDIS_URL": self.url, **(extra or {})}

    def redis(self, **options: Any) -> redis.Redis:
        return redis.Redis.from_url(
            self.url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2, **options
        )

    # -- bringing it up -------------------------------------------------------------------------

    def start(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        (self.root / "redis").mkdir(exist_ok=True)
        self.ledger = Ledger(self.root / "ledger.txt")
        self.redis_proc = Proc(
            "redis",
            [
                "redis-server",
                "--port", str(self.redis_port),
                "--bind", "127.0.0.1",
                "--dir", str(self.root / "redis"),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--protected-mode", "no",
                "--logfile", "redis.log",
            ],
            dict(os.environ),
            self.root / "logs" / "redis.out",
        )  # fmt: skip
        self.start_redis()
        with self.redis() as client:
            functions.load_library_sync(client)
            for i in range(self.size.agents):
                name = f"r{i}"
                token = new_token()
                self.tokens[name] = token
                functions.run_sync(
                    client, functions.runner_add(self.keys, name, token_hash(token), [SPEC])
                )
        for i in range(self.pod_count):
            port = free_port()
            self.pod_ports.append(port)
            self.pods.append(
                Proc(
                    f"pod{i}",
                    [_bin("dispatcher"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                    self.env(),
                    self.root / "logs" / f"pod{i}.log",
                )
            )
        for i in range(self.writer_count):
            self.writers.append(
                Proc(
                    f"writer{i}",
                    [_bin("worker-bridge"), "--log-level", "WARNING"],
                    self.env(),
                    self.root / "logs" / f"writer{i}.log",
                )
            )
        for pod in self.pods:
            pod.start()
        for writer in self.writers:
            writer.start()
        self.lb = LoadBalancer(self.pod_ports)
        self.lb.start()
        for i in range(self.size.agents):
            name = f"r{i}"
            environ = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH")}
            environ[TOKEN_ENV] = self.tokens[name]
            self.agents.append(
                Proc(
                    name,
                    [
                        _bin("dispatch-runner"),
                        "--url", f"http://127.0.0.1:{self.lb.port}",
                        "--runner", name,
                        "--state-dir", str(self.root / "state"),
                        "--kill-grace", "0.5",
                        "--drain-timeout", "1",
                        "--poll-timeout", "5",
                    ],
                    environ,
                    self.root / "logs" / f"agent-{name}.log",
                    death_signal=signal.SIGTERM,
                )
            )  # fmt: skip
        for agent in self.agents:
            agent.start()
        self.wait_healthy(60)

    def start_redis(self) -> None:
        assert self.redis_proc is not None
        self.redis_proc.start()
        wait_for(self.redis_answers, 20, "the private redis-server to answer")

    def redis_answers(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def pod_ready(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                sock.settimeout(2)
                return sock.recv(64).split(b" ")[1:2] == [b"200"]
        except (OSError, IndexError):
            return False

    def runner_states(self, field: str = "state") -> dict[str, str]:
        with self.redis() as client:
            pipe = client.pipeline(transaction=False)
            for agent in self.agents:
                pipe.hget(self.keys.runner(agent.name), field)
            return {a.name: str(s) for a, s in zip(self.agents, pipe.execute(), strict=True)}

    def rq_workers(self) -> list[dict[str, str]]:
        with self.redis() as client:
            names = client.smembers(f"rq:workers:{self.keys.results_queue}")
            out = []
            for key in names:
                name = key.removeprefix("rq:worker:")
                out.append({**client.hgetall(f"rq:worker:{name}"), "name": name})
            return out

    def heal(self, idle: bool = True) -> None:
        """Bring back whatever a scenario left down: Redis, pods, writers, agents; then wait for
        every runner to be idle (``idle``) or, under load, at least connected to a pod."""
        assert self.redis_proc is not None
        if not self.redis_proc.alive():
            self.start_redis()
        for proc in [*self.pods, *self.writers, *self.agents]:
            proc.send(signal.SIGCONT)
            if not proc.alive():
                proc.start()
        self.wait_healthy(60, idle)

    def wait_healthy(self, timeout: float, idle: bool = True) -> None:
        """Every pod ready, every writer registered with rq, every runner connected and (with
        ``idle``) idle."""
        wait_for(lambda: all(self.pod_ready(p) for p in self.pod_ports), timeout, "pods ready")
        pids = {str(w.pid) for w in self.writers}
        wait_for(
            lambda: pids <= {w.get("pid", "") for w in self.rq_workers()},
            timeout,
            "both writers registered with rq",
        )
        if idle:
            wait_for(
                lambda: set(self.runner_states().values()) == {"idle"},
                timeout,
                "every runner connected and idle",
                interval=0.2,
            )
        else:
            wait_for(
                lambda: "" not in self.runner_states("pod").values(),
                timeout,
                "every runner connected",
                interval=0.2,
            )

    # -- load -----------------------------------------------------------------------------------

    def payload(self, seconds: float) -> dict[str, Any]:
        return {"script": self.ledger.script(seconds), "env": {MARK_ENV: self.mark}}

    def job_records(self, ids: list[str]) -> dict[str, dict[str, str]]:
        with self.redis() as client:
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self.keys.job(job_id), "status", "attempt", "exit_code", "error")
            replies = pipe.execute()
        fields = ("status", "attempt", "exit_code", "error")
        return {
            job_id: {f: v for f, v in zip(fields, reply, strict=True) if v is not None}
            for job_id, reply in zip(ids, replies, strict=True)
        }

    # -- taking it down -------------------------------------------------------------------------

    def close(self) -> None:
        for agent in self.agents:
            agent.stop(signal.SIGTERM, timeout=5)
        for proc in [*self.writers, *self.pods]:
            proc.stop(signal.SIGTERM, timeout=5)
        if self.lb is not None:
            self.lb.stop()
        if self.redis_proc is not None:
            self.redis_proc.stop(signal.SIGTERM, timeout=5)
        for pid in job_processes(self.mark):  # a job whose agent was killed last
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


class Producer:
    """Submits jobs at a steady rate from a thread until ``stop``; each submit has an id of its
    own and is retried with that id until it lands (a Redis restart never creates one twice)."""

    def __init__(self, cluster: Cluster, max_attempts: int = 5) -> None:
        self.cluster = cluster
        self.max_attempts = max_attempts
        self.submitted: list[str] = []
        self.gave_up: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        size = self.cluster.size
        client = Client(self.cluster.settings)
        try:
            started, n = time.monotonic(), 0
            while not self._stop.is_set():
                seconds = size.job_seconds[n % len(size.job_seconds)]
                self._submit(client, str(uuid.uuid4()), self.cluster.payload(seconds))
                n += 1
                self._stop.wait(max(0.0, started + n / size.rate - time.monotonic()))
        finally:
            client.close()

    def _submit(self, client: Client, job_id: str, payload: dict[str, Any]) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.submit(
                    SPEC, payload, timeout=60, max_attempts=self.max_attempts, job_id=job_id
                )
                self.submitted.append(job_id)
                return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    self.gave_up.append(job_id)
                    return
                time.sleep(0.05)
