"""Private Redis topologies as real processes on free loopback ports: a standalone server, a
3-primary Redis Cluster and a Sentinel setup (1 primary, 1 replica, 1 sentinel).

Shared by the benchmark (``bench.capacity`` starts its own standalone server and cluster) and the
scale-out tests (``tests/scaleout``, which import it from here). Every server is started with
``redis-server`` from ``PATH``, logs into its own directory under ``root``, and ``stop`` kills
each one. With ``die_with_parent`` (the benchmark's choice) a server also gets SIGTERM when the
thread that started it ends (Linux ``PR_SET_PDEATHSIG``), so none outlives a harness killed by
SIGKILL; start such servers from the main thread.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.procs import _die_with_parent

HAVE_REDIS = shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None
START_TIMEOUT = 30.0


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (both stay under 65536)."""
    for _ in range(1000):
        port = random.randint(20000, 55000)
        if _free(port) and _free(port + 10000):
            return port
    raise AssertionError("no free port pair")


def wait_for(check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Servers:
    """Processes started in ``root``; ``stop`` kills every one of them."""

    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    die_with_parent: bool = False

    def _popen(self, argv: list[str], log: Path) -> None:
        self.procs.append(
            subprocess.Popen(
                argv,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        )

    def redis_server(self, name: str, *args: str) -> int:
        port = free_port()
        workdir = self.root / name
        workdir.mkdir(parents=True)
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(workdir), *args]
        self._popen(argv, workdir / "log")
        wait_for(lambda: bool(redis.Redis(port=port).ping()), f"redis-server {name}")
        return port

    def sentinel(self, name: str, primary: int, service: str) -> int:
        port = free_port()
        workdir = self.root / name
        workdir.mkdir(parents=True)
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary} 1\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 5000\n"
        )
        self._popen(["redis-server", str(conf), "--sentinel"], workdir / "log")
        wait_for(
            lambda: redis.Redis(port=port).sentinel_get_master_addr_by_name(service) is not None,
            "the sentinel",
        )
        return port

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs if proc.poll() is None]

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(timeout=10)


def cluster_command(port: int, *args: str) -> str:
    """The raw text of ``CLUSTER <args>`` on the node at ``port`` (unparsed by redis-py)."""
    client = redis.Redis(port=port)
    try:
        reply = client.execute_command("CLUSTER", *args)  # type: ignore[no-untyped-call]
    finally:
        client.close()
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def start_cluster(servers: Servers, *args: str) -> list[int]:
    """Three primaries, slots spread by redis-cli, cluster state ok on every node (``args``:
    more ``redis-server`` options for every node)."""
    ports = [
        servers.redis_server(
            f"node{i}", "--cluster-enabled", "yes", "--cluster-node-timeout", "2000", *args
        )
        for i in range(3)
    ]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )

    def ok() -> bool:
        return all("cluster_state:ok" in cluster_command(p, "INFO") for p in ports)

    wait_for(ok, "cluster_state:ok on every node")
    return ports


def start_sentinel(servers: Servers, service: str) -> tuple[int, int, int]:
    """A primary, its replica (in sync) and one sentinel watching them (quorum 1)."""
    primary = servers.redis_server("primary")
    replica = servers.redis_server("replica", "--replicaof", "127.0.0.1", str(primary))
    wait_for(
        lambda: redis.Redis(port=replica).info("replication").get("master_link_status") == "up",
        "the replica in sync",
    )
    sentinel = servers.sentinel("sentinel", primary, service)
    return primary, replica, sentinel
