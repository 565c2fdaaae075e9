"""Redis topologies fit for a failover, as real processes on free loopback ports (started per
scenario: the scenario kills a primary, so no other test may share them).

- ``start_sentinel_failover``: a primary, 2 replicas and 3 sentinels (quorum 2), failure detected
  after ``down_after_ms``;
- ``start_cluster_failover``: 3 primaries (slots spread by ``redis-cli --cluster create``) and 2
  replicas of the primary serving a given hash tag, ``cluster-node-timeout`` short; plus a
  standalone server for rq's queues (rq cannot run on a cluster).

Two replicas, so that after a promotion the new primary still has one and ``replicas:1`` can be
kept again without the dead node coming back. Both answer ``primary_port()``: the port of the node
serving the namespace now, as the topology itself says (the sentinels; a surviving cluster node).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field

import redis

from bench.procs import _die_with_parent
from tests.scaleout.servers import Servers, free_port, wait_for

# Short, for quick tests, but not so short that a busy machine fakes a failure: with 1 s and 3 s,
# a sentinel starved of CPU judged the just-promoted primary down and failed over again (a new
# epoch), and the writes the first promoted replica took meanwhile were discarded, jobs whose
# results had been acknowledged with them (3 of 14 runs with both cores busy; 0 of 6 since).
SENTINEL_DOWN_AFTER_MS = 2000
SENTINEL_FAILOVER_TIMEOUT_MS = 10000
CLUSTER_NODE_TIMEOUT_MS = 1000


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1, decode_responses=True)


@dataclass
class Topology:
    """One started topology: where its clients connect and which node the scenario kills."""

    kind: str  # 'sentinel' | 'cluster'
    servers: Servers
    redis_url: str  # DISPATCHER_REDIS_URL
    results_redis_url: str  # DISPATCHER_RESULTS_REDIS_URL ('' = the same Redis)
    primary: int  # the port of the node serving the namespace at start
    replicas: list[int]
    watchers: list[int]  # sentinels, or the cluster's other primaries (never killed)
    service: str = ""
    slot: int = 0
    procs: Procs = field(default_factory=dict)  # every node and sentinel, by port
    killed: set[int] = field(default_factory=set)

    def kill_primary(self) -> float:
        """kill -9 the node serving the namespace now; the time (``time.time()``) it was sent."""
        port = self.primary_port() or self.primary
        proc = self.procs[port]
        at = time.time()
        proc.kill()
        proc.wait(timeout=10)
        self.killed.add(port)
        return at

    def replica_offsets(self) -> dict[int, int | None]:
        """Each replica's replication offset now (None: it does not answer). Read right after a
        kill, it shows which replica had the most of the dead primary's writes: a promotion of
        another one loses the difference, whatever WAIT counted."""
        out: dict[int, int | None] = {}
        for port in self.replicas:
            out[port] = None
            with contextlib.suppress(redis.RedisError, OSError), _client(port) as client:
                info = client.info("replication")
                out[port] = int(info.get("slave_repl_offset", info.get("master_repl_offset", 0)))
        return out

    def primary_port(self) -> int | None:
        """The port of the node serving the namespace, as the topology says now (None: unknown)."""
        for port in self.watchers:
            with contextlib.suppress(redis.RedisError, OSError), _client(port) as client:
                if self.kind == "sentinel":
                    addr = client.sentinel_get_master_addr_by_name(self.service)
                    if addr:
                        return int(addr[1])
                else:
                    for start, end, owner, *_ in client.execute_command("CLUSTER", "SLOTS"):
                        if int(start) <= self.slot <= int(end):
                            return int(owner[1])
        return None

    def promoted(self) -> bool:
        """A node other than a killed one serves the namespace, and it says it is a primary."""
        port = self.primary_port()
        if port is None or port in self.killed:
            return False
        with _client(port) as client:
            return bool(client.info("replication").get("role") == "master")


Procs = dict[int, "subprocess.Popen[bytes]"]


@dataclass(frozen=True)
class Flavour:
    """Which server binary the topology runs, and options every data node gets."""

    binary: str = "redis-server"
    options: tuple[str, ...] = ()


def _server(servers: Servers, procs: Procs, name: str, flavour: Flavour, *args: str) -> int:
    """A data node of ``flavour`` in its own directory under ``servers.root`` (killed by
    ``servers.stop``)."""
    port = free_port()
    workdir = servers.root / name
    workdir.mkdir(parents=True)
    argv = [flavour.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir), *flavour.options, *args]
    proc = subprocess.Popen(
        argv,
        stdout=(workdir / "log").open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,  # SIGTERM when the harness dies
    )
    servers.procs.append(proc)
    procs[port] = proc
    wait_for(lambda: bool(_client(port).ping()), f"{flavour.binary} {name}")
    return port


def _in_sync(port: int) -> bool:
    with _client(port) as client:
        return bool(client.info("replication").get("master_link_status") == "up")


def _sentinel(
    servers: Servers,
    procs: Procs,
    name: str,
    flavour: Flavour,
    primary: int,
    service: str,
    quorum: int,
) -> int:
    port = free_port()
    workdir = servers.root / name
    workdir.mkdir(parents=True)
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor {service} 127.0.0.1 {primary} {quorum}\n"
        f"sentinel down-after-milliseconds {service} {SENTINEL_DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {service} {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
    )
    proc = subprocess.Popen(
        [flavour.binary, str(conf), "--sentinel"],
        stdout=(workdir / "log").open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    servers.procs.append(proc)
    procs[port] = proc
    return port


def start_sentinel_failover(
    servers: Servers,
    service: str,
    replicas: int = 2,
    sentinels: int = 3,
    flavour: Flavour = Flavour(),
) -> Topology:
    """A primary, ``replicas`` replicas in sync and ``sentinels`` sentinels (quorum: a majority)
    that know each other and every replica (so a failover can be authorised at once)."""
    procs: Procs = {}
    primary = _server(servers, procs, "primary", flavour)
    copies = [
        _server(servers, procs, f"replica{i}", flavour, "--replicaof", "127.0.0.1", str(primary))
        for i in range(replicas)
    ]
    for port in copies:
        wait_for(lambda port=port: _in_sync(port), f"replica {port} in sync")  # type: ignore[misc]
    quorum = sentinels // 2 + 1
    watchers = [
        _sentinel(servers, procs, f"sentinel{i}", flavour, primary, service, quorum)
        for i in range(sentinels)
    ]

    def acquainted() -> bool:
        for port in watchers:
            with _client(port) as client:
                others = client.execute_command("SENTINEL", "SENTINELS", service)
                known = client.execute_command("SENTINEL", "REPLICAS", service)
                if len(others) < sentinels - 1 or len(known) < replicas:
                    return False
        return True

    wait_for(acquainted, "the sentinels to know each other and every replica", timeout=60)
    url = f"redis+sentinel://{','.join(f'127.0.0.1:{p}' for p in watchers)}/{service}/0"
    return Topology(
        "sentinel", servers, url, "", primary, copies, watchers, service=service, procs=procs
    )


def start_cluster_failover(
    servers: Servers,
    tag: str,
    replicas: int = 2,
    flavour: Flavour = Flavour(),
) -> Topology:
    """3 primaries; ``replicas`` replicas of the one serving ``tag``'s slot; a standalone server
    for rq. ``cluster-node-timeout`` is short, so a dead primary is failed over in seconds."""
    # no replica migration: with its default (cluster-migration-barrier 1) a failover can move
    # the shard's second replica to a primary without any, leaving the new primary none
    options = (
        "--cluster-enabled",
        "yes",
        "--cluster-node-timeout",
        str(CLUSTER_NODE_TIMEOUT_MS),
        "--cluster-allow-replica-migration",
        "no",
    )
    procs: Procs = {}
    ports = [_server(servers, procs, f"node{i}", flavour, *options) for i in range(3)]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )

    def state_ok(nodes: list[int]) -> bool:
        for port in nodes:
            with _client(port) as client:
                if "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                    return False
        return True

    wait_for(lambda: state_ok(ports), "cluster_state:ok on every node")
    with _client(ports[0]) as client:
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", tag))
    topology = Topology("cluster", servers, "", "", 0, [], ports, slot=slot, procs=procs)
    owner = topology.primary_port()
    assert owner is not None
    with _client(owner) as client:
        owner_id = str(client.execute_command("CLUSTER", "MYID"))
    copies = []
    for i in range(replicas):
        port = _server(servers, procs, f"replica{i}", flavour, *options)
        with _client(port) as client:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", str(owner))
        wait_for(
            lambda port=port: owner_id in str(_client(port).execute_command("CLUSTER", "NODES")),  # type: ignore[misc]
            "the new node to learn the cluster",
        )
        with _client(port) as client:
            client.execute_command("CLUSTER", "REPLICATE", owner_id)
        wait_for(lambda port=port: _in_sync(port), f"replica {port} in sync")  # type: ignore[misc]
        copies.append(port)
    everyone = [*ports, *copies]

    def known() -> bool:
        for port in everyone:
            with _client(port) as client:
                info = str(client.execute_command("CLUSTER", "INFO"))
                if f"cluster_known_nodes:{len(everyone)}" not in info:
                    return False
        return state_ok(everyone)

    wait_for(known, "every node to know every other", timeout=60)
    results = _server(servers, procs, "results", Flavour())
    topology.redis_url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in everyone)
    topology.results_redis_url = f"redis://127.0.0.1:{results}/0"
    topology.primary = owner
    topology.replicas = copies
    topology.watchers = [p for p in ports if p != owner]
    return topology


__all__ = [
    "Flavour",
    "Topology",
    "start_cluster_failover",
    "start_sentinel_failover",
]
