"""Private Redis topologies for the scale-out tests, as real processes on free loopback ports:
a 3-primary Redis Cluster (plus a standalone server for its rq queues) and a Sentinel setup
(1 primary, 1 replica, 1 sentinel). Each is started once per session and killed at its end."""

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

    def redis_server(self, name: str, *args: str) -> int:
        port = free_port()
        workdir = self.root / name
        workdir.mkdir()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(workdir), *args]
        self.procs.append(
            subprocess.Popen(argv, stdout=(workdir / "log").open("wb"), stderr=subprocess.STDOUT)
        )
        wait_for(lambda: bool(redis.Redis(port=port).ping()), f"redis-server {name}")
        return port

    def sentinel(self, name: str, primary: int, service: str) -> int:
        port = free_port()
        workdir = self.root / name
        workdir.mkdir()
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary} 1\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 5000\n"
        )
        self.procs.append(
            subprocess.Popen(
                ["redis-server", str(conf), "--sentinel"],
                stdout=(workdir / "log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        wait_for(
            lambda: redis.Redis(port=port).sentinel_get_master_addr_by_name(service) is not None,
            "the sentinel",
        )
        return port

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(timeout=10)


def start_cluster(servers: Servers) -> list[int]:
    """Three primaries, slots spread by redis-cli, cluster state ok on every node."""
    ports = [
        servers.redis_server(
            f"node{i}", "--cluster-enabled", "yes", "--cluster-node-timeout", "2000"
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
        return all(
            "cluster_state:ok" in str(redis.Redis(port=p).execute_command("CLUSTER", "INFO"))
            for p in ports
        )

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
