"""The building blocks every scenario uses: pods, result writers, runners, producers, cleanup."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from bench import common, metrics
from bench.common import ProducerConfig, ProducerResult, SimConfig, SimResult, SimRunner
from bench.procs import Child, Procs, free_port, http_status
from dispatcher import admin, redisconn
from dispatcher.keys import Keys


@dataclass
class Pod:
    child: Child
    port: int

    def ws_url(self, runner: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/runners/{runner}/channel"


@dataclass
class Sims:
    children: list[Child]
    connected: int
    errors: int
    first_error: str


@dataclass
class Harness:
    """One benchmark run: its Redis, its namespace prefix, its work directory and children."""

    redis_url: str
    run_ns: str
    work_dir: Path
    procs: Procs
    client: redis.asyncio.Redis
    quick: bool = False
    poll_interval: float = 1.0
    compression: bool = True
    postgres_url: str = ""  # the results scenario's postgres sink ("" = skip that phase)
    results_phases: tuple[str, ...] = ()  # phases of the results scenario (() = all)
    results_redis_url: str = ""  # DISPATCHER_RESULTS_REDIS_URL ("" = rq on the same Redis)
    tagged: bool = False  # hash-tagged namespaces ({name}), as a Redis Cluster requires

    @property
    def redis_port(self) -> int:
        port = self.client.connection_pool.connection_kwargs.get("port", 6379)
        return int(port)

    def log(self, message: str) -> None:
        """A timestamped line in the run's harness.log (where a stalled step can be found)."""
        with (self.work_dir / "harness.log").open("a") as f:
            f.write(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {message}\n")

    def ns(self, suffix: str) -> str:
        name = f"{self.run_ns}-{suffix}"
        return "{" + name + "}" if self.tagged else name

    def env(self, ns: str, **extra: str) -> dict[str, str]:
        env = {"DISPATCHER_REDIS_URL": self.redis_url, "DISPATCHER_NAMESPACE": ns, **extra}
        if self.results_redis_url:
            env["DISPATCHER_RESULTS_REDIS_URL"] = self.results_redis_url
        return env

    # -- servers ------------------------------------------------------------------------------

    async def start_pods(
        self, ns: str, count: int, wake: str = "pubsub", extra_env: dict[str, str] | None = None
    ) -> list[Pod]:
        env = self.env(ns, DISPATCHER_WAKE=wake, DISPATCHER_POLL_INTERVAL=str(self.poll_interval))
        env.update(extra_env or {})
        pods = []
        for i in range(count):
            port = free_port()
            child = await self.procs.python(
                f"pod{i}-{wake}",
                "dispatcher",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                env=env,
            )
            pods.append(Pod(child, port))
        await asyncio.gather(*(self._until_ready(pod) for pod in pods))
        self.log(f"{ns}: {count} pod(s) ready ({wake})")
        return pods

    async def _until_ready(self, pod: Pod, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pod.child.proc.returncode is not None:
                raise pod.child.failure("exited during start-up")
            if await http_status(pod.port, "/readyz") == 200:
                return
            await asyncio.sleep(0.05)
        raise pod.child.failure(f"/readyz not 200 within {timeout:.0f} s")

    async def start_writers(
        self, ns: str, count: int, extra_env: dict[str, str] | None = None, first: int = 0
    ) -> list[Child]:
        env = {**self.env(ns), **(extra_env or {})}
        return [
            await self.procs.python(f"writer{i}", "worker_bridge", env=env)
            for i in range(first, first + count)
        ]

    # -- runners ------------------------------------------------------------------------------

    async def register(self, ns: str, count: int, pods: list[Pod]) -> list[SimRunner]:
        """Register ``count`` runners of the bench spec, runner k on pod k mod len(pods)."""

        def work() -> list[SimRunner]:
            client = redisconn.sync_client(self.redis_url)
            keys = Keys(ns)
            try:
                out = []
                for k in range(count):
                    name = f"r{k:05d}"
                    token = admin.add_runner(client, keys, name, [common.SPEC])
                    out.append(SimRunner(name, token, pods[k % len(pods)].ws_url(name)))
                return out
            finally:
                client.close()

        return await asyncio.to_thread(work)

    def sim_command(self, config: Path) -> tuple[str, ...]:
        """The simulator module and its arguments for one config file (``bench.sim``)."""
        return ("bench.sim", str(config))

    async def start_sims(
        self,
        runners: list[SimRunner],
        per_process: int,
        *,
        poll_timeout: int = 30,
        send_running: bool = True,
        connect_concurrency: int = 100,
        timeout: float = 180.0,
    ) -> Sims:
        """Start simulator processes and wait until every runner has connected (or failed)."""
        procs = max(1, math.ceil(len(runners) / max(1, per_process)))
        chunk = math.ceil(len(runners) / procs) if runners else 0
        children = []
        for i in range(procs):
            cfg_path = self.work_dir / f"sim-{len(self.procs.children) + 1:03d}.json"
            cfg = SimConfig(
                runners=runners[i * chunk : (i + 1) * chunk],
                out=str(cfg_path.with_suffix(".out.json")),
                poll_timeout=poll_timeout,
                send_running=send_running,
                connect_concurrency=connect_concurrency,
                compression=self.compression,
            )
            common.dump(cfg_path, cfg)
            child = await self.procs.python(
                f"sim{i}", *self.sim_command(cfg_path), env={}, pipes=True
            )
            child.config = cfg_path
            children.append(child)
        self.log(f"{len(children)} simulator(s) started for {len(runners)} runners")
        events = await asyncio.gather(*(c.event("connected", timeout) for c in children))
        self.log("simulators connected")
        errors = sum(int(e.get("errors", 0)) for e in events)
        first = next((str(e["first_error"]) for e in events if e.get("first_error")), "")
        return Sims(children, sum(int(e["connected"]) for e in events), errors, first)

    async def stop_sims(self, sims: Sims) -> list[SimResult]:
        async def one(child: Child) -> SimResult:
            self.log(f"{child.name}: stop")
            await child.command("stop")
            await child.event("done", 120)
            self.log(f"{child.name}: done")
            await self.procs.stop(child, 10)
            return common.load(self._out_path(child), SimResult)

        return list(await asyncio.gather(*(one(c) for c in sims.children)))

    @staticmethod
    def _out_path(child: Child) -> Path:
        assert child.config is not None
        return child.config.with_suffix(".out.json")

    async def wait_idle(self, ns: str, count: int, wake: str, timeout: float = 120.0) -> float:
        """Wait until ``count`` runners sit in a long poll; returns the seconds waited.

        In pub/sub mode they are in the spec's idle set; the poll baseline never enters it, so
        there the wait is one poll interval (every runner has tried the ready script once).
        """
        started = time.monotonic()
        if wake == "poll":
            await asyncio.sleep(self.poll_interval + 0.2)
            return time.monotonic() - started
        key = Keys(ns).idle(common.SPEC)
        while time.monotonic() - started < timeout:
            if int(await self.client.zcard(key)) >= count:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        have = await self.client.zcard(key)
        raise RuntimeError(f"only {have} of {count} runners became idle within {timeout:.0f} s")

    # -- producers ----------------------------------------------------------------------------

    async def start_producer(
        self, ns: str, mode: str, *, rate: float = 0.0, duration: float = 10.0, max_backlog: int = 0
    ) -> Child:
        cfg_path = self.work_dir / f"producer-{len(self.procs.children) + 1:03d}.json"
        cfg = ProducerConfig(
            redis_url=self.redis_url,
            results_redis_url=self.results_redis_url,
            namespace=ns,
            out=str(cfg_path.with_suffix(".out.json")),
            mode=mode,
            rate=rate,
            duration=duration,
            max_backlog=max_backlog,
        )
        common.dump(cfg_path, cfg)
        child = await self.procs.python(
            "producer", "bench.producer", str(cfg_path), env={}, pipes=True
        )
        child.config = cfg_path
        await child.event("ready", 30)
        return child

    async def finish_producer(self, child: Child, timeout: float) -> ProducerResult:
        await child.event("done", timeout)
        self.log("producer done")
        await self.procs.stop(child, 10)
        self.log("producer stopped")
        return common.load(self._out_path(child), ProducerResult)

    # -- Redis --------------------------------------------------------------------------------

    async def stats(self, ns: str) -> dict[str, int]:
        raw = await self.client.hgetall(Keys(ns).stats)
        return {str(k): int(v) for k, v in raw.items()}

    async def wait_counter(self, ns: str, name: str, target: int, timeout: float) -> bool:
        """Wait until the namespace counter ``name`` reaches ``target``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await self.stats(ns)).get(name, 0) >= target:
                return True
            await asyncio.sleep(0.05)
        return False

    async def pod_redis_ports(self, pods: list[Pod]) -> set[int]:
        pids = [p.child.pid for p in pods]
        return await asyncio.to_thread(metrics.local_ports, pids, self.redis_port)

    async def cleanup(self, ns: str) -> int:
        """Delete every key of namespace ``ns`` (and of its results queue in rq)."""
        return await delete_namespace(self.client, ns)

    async def stop(self, *groups: list[Child] | list[Pod]) -> None:
        children: list[Child] = []
        for group in groups:
            for item in group:
                children.append(item.child if isinstance(item, Pod) else item)
        await self.procs.stop_many(children)


async def delete_namespace(client: redis.asyncio.Redis, prefix: str) -> int:
    """Delete the keys of every namespace starting with ``prefix``, rq's included."""
    deleted = 0
    for pattern in (f"{prefix}*", f"rq:*{prefix}*"):
        batch: list[Any] = []
        async for name in client.scan_iter(match=pattern, count=1000):
            batch.append(name)
            if len(batch) >= 500:
                deleted += int(await client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(await client.unlink(*batch))
    for registry in ("rq:queues", "rq:workers"):
        members = [m for m in await client.smembers(registry) if prefix in str(m)]
        if members:
            await client.srem(registry, *members)
    return deleted
