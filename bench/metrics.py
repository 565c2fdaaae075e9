"""Measurements: latency summaries, process CPU and RSS, Redis command counts and clients."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from bench import deps

# Commands the harness itself sends while it measures (excluded from the idle counts).
HARNESS_COMMANDS = frozenset({"info", "client|list", "client|id", "client|setname", "hello"})


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def summary_ms(seconds: Iterable[float]) -> dict[str, float | int]:
    """count, min, median, p90, p99, max and mean of latencies given in seconds, in ms."""
    values = sorted(v * 1000.0 for v in seconds)
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "min": round(values[0], 3),
        "p50": round(percentile(values, 0.5), 3),
        "p90": round(percentile(values, 0.9), 3),
        "p99": round(percentile(values, 0.99), 3),
        "max": round(values[-1], 3),
        "mean": round(sum(values) / len(values), 3),
    }


# -- processes --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (None when it is gone)."""
    psutil = deps.psutil()
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def rss_bytes(pid: int) -> int:
    psutil = deps.psutil()
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, idle and iowait excluded)."""
    times = deps.psutil().cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class CpuWindow:
    """CPU % of named processes over a window (100 % = one core busy), and of the machine."""

    pids: dict[str, int]
    start: dict[str, float | None]
    t0: float
    machine0: float

    @classmethod
    def begin(cls, pids: dict[str, int], now: float) -> CpuWindow:
        start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        return cls(pids, start, now, machine_busy_seconds())

    def end(self, now: float) -> dict[str, float]:
        """Per process, plus ``machine`` (every core) and ``others`` (machine minus ours).

        ``others`` is the harness itself and whatever else runs on this machine meanwhile; a
        large value means the figures were measured on a busy machine.
        """
        span = max(now - self.t0, 1e-9)
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            before, after = self.start[name], cpu_seconds(pid)
            if before is not None and after is not None:  # else it exited meanwhile
                out[name] = round(100.0 * (after - before) / span, 2)
        machine = round(100.0 * (machine_busy_seconds() - self.machine0) / span, 2)
        out["machine"] = machine
        out["others"] = round(machine - sum(v for k, v in out.items() if k != "machine"), 2)
        return out


def local_ports(pids: Iterable[int], remote_port: int) -> set[int]:
    """Local ports of the TCP connections of ``pids`` to ``remote_port`` (their Redis links)."""
    psutil = deps.psutil()
    ports: set[int] = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        for conn in conns:
            if conn.raddr and conn.raddr.port == remote_port:
                ports.add(conn.laddr.port)
    return ports


# -- Redis ------------------------------------------------------------------------------------


def command_calls(info: dict[str, Any]) -> dict[str, int]:
    """``INFO commandstats`` as command -> calls (commands run inside functions included)."""
    calls: dict[str, int] = {}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            calls[key.removeprefix("cmdstat_")] = int(value.get("calls", 0))
    return calls


def command_usec(info: dict[str, Any]) -> dict[str, int]:
    """``INFO commandstats`` as command -> microseconds spent in it (FCALL: the whole call)."""
    usec: dict[str, int] = {}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            usec[key.removeprefix("cmdstat_")] = int(value.get("usec", 0))
    return usec


async def redis_snapshot(client: redis.asyncio.Redis) -> dict[str, Any]:
    """Command counts and Redis CPU seconds, for deltas."""
    stats = await client.info("commandstats")
    cpu = await client.info("cpu")
    return {
        "calls": command_calls(stats),
        "usec": command_usec(stats),
        "cpu": float(cpu.get("used_cpu_user", 0)) + float(cpu.get("used_cpu_sys", 0)),
    }


def command_delta(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Per-second command rates between two snapshots, without the harness's own commands."""
    b, a = before["calls"], after["calls"]
    delta = {name: a.get(name, 0) - b.get(name, 0) for name in a}
    delta = {name: n for name, n in delta.items() if n > 0}
    ours = {name: n for name, n in delta.items() if name not in HARNESS_COMMANDS}
    total = sum(ours.values())
    span = max(seconds, 1e-9)
    top = sorted(ours.items(), key=lambda kv: -kv[1])[:15]
    return {
        "commands_per_s": round(total / span, 2),
        "fcall_per_s": round(ours.get("fcall", 0) / span, 2),
        "inside_functions_per_s": round((total - ours.get("fcall", 0)) / span, 2),
        "by_command_per_s": {name: round(n / span, 2) for name, n in top},
        # Redis's own time per call (FCALL: the whole function, commands inside included)
        "usec_per_call": {
            name: round(
                (after.get("usec", {}).get(name, 0) - before.get("usec", {}).get(name, 0)) / n, 2
            )
            for name, n in top
        },
        "excluded_harness_commands": sorted(set(delta) & HARNESS_COMMANDS),
        "redis_cpu_percent": round(100.0 * (after["cpu"] - before["cpu"]) / span, 2),
    }


def parse_client_list(text: str) -> list[dict[str, str]]:
    clients = []
    for line in text.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields:
            clients.append(fields)
    return clients


async def client_list(client: redis.asyncio.Redis, kind: str | None = None) -> list[dict[str, str]]:
    args = ["CLIENT", "LIST"] + (["TYPE", kind] if kind else [])
    raw = await client.execute_command(*args)  # type: ignore[no-untyped-call]
    if isinstance(raw, bytes):
        raw = raw.decode()
    if isinstance(raw, list):  # some clients parse it already
        return [dict(c) for c in raw]
    return parse_client_list(str(raw))


def _port(addr: str) -> int:
    try:
        return int(addr.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return -1


async def foreign_activity(
    client: redis.asyncio.Redis, our_ports: set[int], window: float
) -> list[str]:
    """Other clients of this Redis that sent commands within the last ``window`` seconds.

    Their commands are in ``INFO commandstats`` too; a non-empty answer means the command counts
    of the window include someone else's traffic (use ``--private-redis`` for clean figures).
    """
    me = int(await client.client_id())
    found = []
    for c in await client_list(client):
        if int(c.get("id", -1)) == me or _port(c.get("addr", "")) in our_ports:
            continue
        if float(c.get("idle", "1e9")) < window and c.get("cmd") not in (None, "NULL"):
            found.append(f"{c.get('addr')} name={c.get('name', '')} cmd={c.get('cmd')}")
    return found


async def kill_pubsub(client: redis.asyncio.Redis, our_ports: set[int]) -> int:
    """``CLIENT KILL TYPE pubsub``, limited to the connections of our pods (``ADDR``).

    Limited so that other users of a shared Redis keep their subscriptions; on a private Redis it
    is the same as the bare command. Returns the number of connections killed.
    """
    killed = 0
    for c in await client_list(client, "pubsub"):
        if _port(c.get("addr", "")) in our_ports:
            killed += int(
                await client.execute_command(  # type: ignore[no-untyped-call]
                    "CLIENT", "KILL", "TYPE", "pubsub", "ADDR", c["addr"]
                )
            )
    return killed
