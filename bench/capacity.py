"""Capacity figures on Redis Cluster vs standalone, pods and shards (issue 13).

    .venv/bin/python -m bench.capacity [--quick] [--phase latency|throughput|shards|pods ...]

Starts its own private Redis servers as real processes (``bench.servers``): a standalone
``redis-server``, and a 3-primary Redis Cluster with a standalone server for its rq queues. Then
the phases of ``bench.capacityphases`` run against them with real pods, result writers, simulated
runners and producers (``bench.harness``). Every server and child is stopped at the end, on
SIGTERM too. Results: ``capacity-<run>.json`` and ``capacity-<run>.md`` in the results directory,
and ``CAPACITY.md`` (the latest full run) beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import secrets
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import backends, capacityphases, capacityreport, deps, shards
from bench.backends import Backend
from bench.capacityphases import Side, Sizes
from bench.cli import DEFAULT_RESULTS, QUICK_RESULTS, _rel, environment
from bench.harness import Harness
from bench.procs import Procs
from bench.servers import HAVE_REDIS, Servers, cluster_command
from dispatcher import redisconn
from dispatcher.keys import Keys

PHASES = ("latency", "throughput", "shards", "pods")
CANDIDATES = 64  # namespace names tried to find enough on each primary


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers: {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.capacity",
        description="Capacity on a private Redis Cluster (3 primaries) vs a private standalone "
        "Redis: dispatch latency of both, the most jobs/s of one namespace with 2 and 3 pods, "
        "namespaces on one shard vs spread over three, and runners held by one pod.",
    )
    p.add_argument(
        "--phase", action="append", choices=PHASES, help="phase to run (repeatable; default all)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness only")
    p.add_argument(
        "--results-dir",
        type=Path,
        help="where the JSON and Markdown go (default bench/results; with --quick "
        "bench/results/tmp/quick, which git ignores)",
    )
    p.add_argument("--rounds", type=int, help="latency rounds per backend (default 2)")
    p.add_argument(
        "--pod-runners", type=_counts, help="runner counts one pod holds (default 1000,3000,5000)"
    )
    p.add_argument(
        "--throughput-pods", type=_counts, help="pod counts of the throughput phase (default 2,3)"
    )
    p.add_argument("--duration", type=float, help="override every phase's duration (s)")
    return p


def chosen_sizes(args: argparse.Namespace) -> Sizes:
    sizes = capacityphases.QUICK if args.quick else capacityphases.FULL
    changes: dict[str, Any] = {}
    if args.rounds is not None:
        changes["latency_rounds"] = max(1, args.rounds)
    if args.pod_runners is not None:
        changes["pod_runners"] = args.pod_runners
    if args.throughput_pods is not None:
        changes["throughput_pods"] = args.throughput_pods
    if args.duration is not None:
        for name in ("latency_duration", "throughput_duration", "shard_duration", "pod_duration"):
            changes[name] = args.duration
    return dataclasses.replace(sizes, **changes)


def side(backend: Backend, run_ns: str, work_dir: Path, procs: Procs, quick: bool) -> Side:
    client = redisconn.async_client(
        backend.redis_url, 32, 20.0, decode_responses=True, client_name="bench-capacity"
    )
    harness = Harness(
        redis_url=backend.redis_url,
        run_ns=run_ns,
        work_dir=work_dir,
        procs=procs,
        client=client,
        quick=quick,
        results_redis_url=backend.results_redis_url,
        tagged=backend.tagged,
    )
    return Side(backend, harness, backend.pids())


def placement(cl: Side, count: int) -> tuple[list[str], list[str], dict[str, Any]]:
    """Namespaces all on one primary and one on each, checked with CLUSTER KEYSLOT (for the
    namespace and for one of its real keys) against CLUSTER NODES."""
    port = cl.backend.data_ports[0]
    nodes = shards.parse_nodes(cluster_command(port, "NODES"))
    names = [cl.harness.ns(f"shard{k}") for k in range(CANDIDATES)]
    slots = {n: int(cluster_command(port, "KEYSLOT", n)) for n in names}
    for n in names:  # the tag decides: a key of the namespace has the namespace's slot
        key_slot = int(cluster_command(port, "KEYSLOT", Keys(n).stats))
        if key_slot != slots[n]:
            raise RuntimeError(f"{Keys(n).stats} is in slot {key_slot}, not {slots[n]}")
    groups = shards.by_primary(slots.items(), nodes)
    same = shards.same_shard(groups, count)
    spread = shards.one_per_shard(groups, count)
    if same is None or spread is None:
        raise RuntimeError(f"{CANDIDATES} names did not give {count} namespaces per placement")
    where = {}
    for name in {*same, *spread}:
        primary = shards.owner(nodes, slots[name])
        assert primary is not None
        where[name] = {"slot": slots[name], "primary": primary.addr}
    return same, spread, where


async def run_phase(
    name: str, fn: Callable[[], Awaitable[dict[str, Any]]], data: dict[str, Any]
) -> None:
    print(f"[capacity] {name}: running ...", flush=True)
    t = time.time()
    try:
        result = await fn()
    except Exception as exc:  # one phase failing must not lose the others' figures
        data["errors"][name] = f"{type(exc).__name__}: {exc}"
        print(f"[capacity] {name}: FAILED: {exc}", flush=True)
        return
    result["elapsed_s"] = round(time.time() - t, 1)
    data["phases"][name] = result
    print(f"[capacity] {name}: done in {result['elapsed_s']} s", flush=True)


async def run(args: argparse.Namespace) -> int:
    deps.check()
    if not HAVE_REDIS:
        print("bench.capacity: needs redis-server and redis-cli on PATH", file=sys.stderr)
        return 2
    sizes = chosen_sizes(args)
    wanted = [p for p in PHASES if p in set(args.phase or PHASES)]
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    results_dir: Path = args.results_dir or (QUICK_RESULTS if args.quick else DEFAULT_RESULTS)
    work_dir = results_dir / "tmp" / f"capacity-{run_id}"
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data: dict[str, Any] = {
        "run_id": run_id,
        "started": started,
        "started_iso": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "command": shlex.join([Path(sys.executable).name, "-m", "bench.capacity", *sys.argv[1:]]),
        "quick": args.quick,
        "sizes": capacityphases.sizes_dict(sizes),
        "loadavg_at_start": capacityphases.loadavg(),
        "phases": {},
        "errors": {},
    }
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    if main_task is not None:  # SIGTERM: stop every child and server, then exit
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    servers = Servers(work_dir / "redis", die_with_parent=True)
    procs = Procs(work_dir)
    sides: list[Side] = []
    try:
        std = side(backends.standalone(servers), f"cap-{run_id}", work_dir, procs, args.quick)
        sides.append(std)
        cl = side(backends.cluster(servers), f"cap-{run_id}", work_dir, procs, args.quick)
        sides.append(cl)
        server = await std.harness.client.info("server")
        data["environment"] = environment(server)
        data["backends"] = {s.backend.name: dataclasses.asdict(s.backend) for s in sides}
        if "latency" in wanted:
            await run_phase("latency", lambda: capacityphases.latency(std, cl, sizes), data)
        if "throughput" in wanted:
            await run_phase("throughput", lambda: capacityphases.throughput(std, cl, sizes), data)
        if "shards" in wanted:
            same, spread, where = placement(cl, sizes.shard_namespaces)
            data["placement"] = where
            primaries = {n: str(w["primary"]) for n, w in where.items()}
            await run_phase(
                "shards", lambda: capacityphases.shards(cl, sizes, same, spread, primaries), data
            )
        if "pods" in wanted:
            await run_phase("pods", lambda: capacityphases.pods(cl, sizes), data)
    finally:
        await procs.stop_all()
        for s in sides:
            await s.harness.client.aclose()
        servers.stop()
    data["loadavg_at_end"] = capacityphases.loadavg()
    data["wall_time_s"] = round(time.time() - started, 1)
    data["targets"] = capacityreport.evaluate(data["phases"])
    write_outputs(args, data, results_dir, wanted)
    broken = any(r["met"] is False and r["figure"].startswith("lost") for r in data["targets"])
    return 1 if data["errors"] or broken else 0


def write_outputs(
    args: argparse.Namespace, data: dict[str, Any], results_dir: Path, wanted: list[str]
) -> None:
    json_path = results_dir / f"capacity-{data['run_id']}.json"
    md_path = json_path.with_suffix(".md")
    data["files"] = {"json": _rel(json_path), "markdown": _rel(md_path)}
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    text = capacityreport.render(data)
    md_path.write_text(text)
    full = not args.quick and wanted == list(PHASES) and args.duration is None
    latest = results_dir / "CAPACITY.md"
    if full or args.results_dir is not None:
        latest.write_text(text)
    print()
    for row in data["targets"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
        print(f"  {verdict:6} {row['figure']} = {row['value']} (target {row['target']})")
    for label, error in data["errors"].items():
        print(f"  FAILED {label}: {error}")
    print(f"\n[capacity] wrote {_rel(json_path)}, {_rel(md_path)} in {data['wall_time_s']} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except deps.MissingDependency as exc:
        print(f"bench.capacity: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM
        return 143


if __name__ == "__main__":
    sys.exit(main())
