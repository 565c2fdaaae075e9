"""The Redis backends the capacity scenario measures, each started as private processes:
a standalone ``redis-server``, and a 3-primary Redis Cluster with a standalone server for its rq
queues (rq cannot run on a cluster: docs/operations.md, "Redis Cluster and Sentinel").
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from bench.servers import Servers, start_cluster

# enough for thousands of simulated runners' pods, writers and harness connections
SERVER_OPTIONS = ("--maxclients", "20000")


@dataclass(frozen=True)
class Backend:
    name: str  # 'standalone' or 'cluster'
    redis_url: str  # DISPATCHER_REDIS_URL
    results_redis_url: str  # DISPATCHER_RESULTS_REDIS_URL ('' = the same Redis)
    tagged: bool  # whether namespaces must be hash-tagged
    data_ports: tuple[int, ...]  # the servers holding namespaces (every primary of a cluster)
    results_port: int | None = None  # the rq Redis of a cluster

    @property
    def cluster(self) -> bool:
        return self.name == "cluster"

    def pids(self) -> dict[str, int]:
        """Every server's pid by a short name, for CPU accounting."""
        out = {f"redis{i}": server_pid(port) for i, port in enumerate(self.data_ports)}
        if self.results_port is not None:
            out["redis-rq"] = server_pid(self.results_port)
        return out


def server_pid(port: int) -> int:
    client = redis.Redis(port=port)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def cpu_seconds(port: int) -> float:
    """User + system CPU seconds of the server on ``port`` so far (``INFO cpu``)."""
    client = redis.Redis(port=port)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def standalone(servers: Servers) -> Backend:
    port = servers.redis_server("standalone", *SERVER_OPTIONS)
    return Backend("standalone", f"redis://127.0.0.1:{port}/0", "", False, (port,))


def cluster(servers: Servers) -> Backend:
    ports = start_cluster(servers, *SERVER_OPTIONS)
    results = servers.redis_server("cluster-rq", *SERVER_OPTIONS)
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
    return Backend(
        "cluster",
        f"redis+cluster://{seeds}",
        f"redis://127.0.0.1:{results}/0",
        True,
        tuple(ports),
        results,
    )
