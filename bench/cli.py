"""`python -m bench`: run the scenarios, write the JSON, the PNG chart and SUMMARY.md."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import hashlib
import json
import os
import platform
import resource
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from bench import deps, floor, floormd, floorreport, report, resultspath, resultsreport, scenarios
from bench.harness import Harness, delete_namespace
from bench.procs import ROOT, Procs, free_port
from bench.scenarios import MODES, Size

SCENARIOS = ("latency", "throughput", "idle", "connections", "lostbell")
EXTRA_SCENARIOS = ("results", "floor")  # run only when named: `--scenario results`
DEFAULT_RESULTS = ROOT / "bench" / "results"
QUICK_RESULTS = DEFAULT_RESULTS / "tmp" / "quick"
PACKAGES = ("websockets", "redis", "hiredis", "uvicorn", "uvloop", "starlette", "msgspec", "rq")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the dispatcher: latency, throughput, idle cost, connections and "
        "lost doorbells, against the poll baseline (DISPATCHER_WAKE=poll); and, when named, "
        "the results path (--scenario results: load, drain, postgres sink, kill -9 a writer).",
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, *EXTRA_SCENARIOS, "all"],
        help="scenario to run (repeatable; default: all = the first five; 'results' and 'floor' "
        "(issue 11: pub/sub vs poll vs plain rq, side by side) run only when named)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (a few runners, 1-3 s each): checks the harness, not speed",
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("DISPATCHER_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis to use (default: $DISPATCHER_REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    p.add_argument(
        "--private-redis",
        action="store_true",
        help="start a throw-away redis-server for this run (clean INFO commandstats "
        "when others share the default Redis)",
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where the JSON, PNG and SUMMARY.md go (default: bench/results; with --quick "
        "bench/results/tmp/quick, which git ignores)",
    )
    p.add_argument("--runners", type=int, help="override the runner count of every scenario run")
    p.add_argument("--duration", type=float, help="override the duration (s) of every scenario")
    p.add_argument(
        "--rate", type=float, help="override the submit rate (jobs/s) of latency and lostbell"
    )
    p.add_argument(
        "--poll-timeout",
        type=int,
        help="runners' long poll, s (default 30, the reference agent's default)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="DISPATCHER_POLL_INTERVAL of the poll baseline (default 1 s)",
    )
    p.add_argument(
        "--no-compression",
        action="store_true",
        help="simulated runners do not offer permessage-deflate (the reference agent "
        "does; for measuring what compression costs)",
    )
    p.add_argument("--writers", type=int, help="result writers (worker_bridge processes)")
    p.add_argument(
        "--drain",
        type=int,
        help="results scenario: results waiting when the writers start (default 50,000)",
    )
    p.add_argument(
        "--kill-results",
        type=int,
        help="results scenario: results waiting in the kill -9 phase (default 20,000)",
    )
    p.add_argument(
        "--results-phases",
        default=",".join(resultspath.PHASES),
        help="results scenario: comma-separated phases to run "
        f"(default {','.join(resultspath.PHASES)})",
    )
    p.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "DISPATCHER_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL of the results scenario's postgres phase (default: "
        "$DISPATCHER_POSTGRES_URL or postgresql://postgres@127.0.0.1:5432/postgres; the phase "
        "is skipped, with the reason, when it does not answer)",
    )
    p.add_argument("--producers", type=int, help="producer processes of the throughput scenario")
    p.add_argument(
        "--summary",
        choices=["auto", "yes", "no"],
        default="auto",
        help="rewrite SUMMARY.md: auto = only for a full-size run of all scenarios, "
        "or whenever --results-dir is not the default",
    )
    return p


def sizes(args: argparse.Namespace, names: list[str]) -> dict[str, Size]:
    base = (scenarios.QUICK | floor.QUICK) if args.quick else (scenarios.FULL | floor.FULL)
    out = {}
    for name in names:
        size = base[name]
        changes: dict[str, Any] = {}
        for field in (
            "runners",
            "duration",
            "poll_timeout",
            "writers",
            "producers",
            "drain",
            "kill_results",
        ):
            value = getattr(args, field)
            if value is not None:
                changes[field] = value
        if args.rate is not None and name in ("latency", "lostbell"):
            changes["rate"] = args.rate
        out[name] = dataclasses.replace(size, **changes)
    return out


def git(*cmd: str) -> str:
    try:
        return subprocess.run(
            ["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(server: dict[str, Any]) -> dict[str, Any]:
    psutil = deps.psutil()
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    kind = (
        "Valkey" if server.get("server_name") == "valkey" or "valkey_version" in server else "Redis"
    )
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_server": kind,
        "redis_version": server.get("valkey_version") or server.get("redis_version"),
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        # identifies the uncommitted changes measured (sha1 of `git diff HEAD`)
        "git_diff_sha1": hashlib.sha1(git("diff", "HEAD").encode()).hexdigest(),
        "packages": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


async def start_private_redis(procs: Procs) -> str:
    port = free_port()
    child = await procs.spawn(
        "redis-server",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "20000",
        ],
        env={},
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.asyncio.Redis.from_url(url)
    for _ in range(100):
        try:
            await client.ping()
            break
        except (redis.RedisError, OSError):
            await asyncio.sleep(0.05)
    else:
        raise child.failure("redis-server did not answer")
    await client.aclose()
    return url


async def run(args: argparse.Namespace) -> int:
    deps.check()
    phases = tuple(p.strip() for p in args.results_phases.split(",") if p.strip())
    unknown = set(phases) - set(resultspath.PHASES)
    if unknown:
        print(f"bench: unknown results phase(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    wanted = set(args.scenario or ["all"])
    if "all" in wanted:
        wanted |= set(SCENARIOS)
    names = [n for n in (*SCENARIOS, *EXTRA_SCENARIOS) if n in wanted]
    chosen = sizes(args, names)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    results_dir: Path = args.results_dir or (QUICK_RESULTS if args.quick else DEFAULT_RESULTS)
    work_dir = results_dir / "tmp" / run_id
    work_dir.mkdir(parents=True, exist_ok=True)
    procs = Procs(work_dir)
    started = time.time()
    data: dict[str, Any] = {
        "run_id": run_id,
        "started": started,
        "started_iso": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "command": shlex.join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        "quick": args.quick,
        "scenarios": {},
        "errors": {},
    }
    client: redis.asyncio.Redis | None = None
    run_ns = f"bench-{run_id}"
    # `kill -USR1 <harness pid>` writes every task's stack to harness.log (a stalled step)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks, work_dir / "harness.log")
    main_task = asyncio.current_task()
    if main_task is not None:  # SIGTERM: stop every child and clean up, then exit
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        redis_url = await start_private_redis(procs) if args.private_redis else args.redis_url
        client = redis.asyncio.Redis.from_url(
            redis_url, decode_responses=True, client_name="bench-harness"
        )
        server = await client.info("server")
        data["environment"] = environment(server)
        data["environment"]["redis_url"] = redis_url
        data["environment"]["private_redis"] = args.private_redis
        data["environment"]["runner_compression"] = not args.no_compression
        data["namespace"] = run_ns
        data["sizes"] = {n: scenarios.size_dict(s) for n, s in chosen.items()}
        h = Harness(
            redis_url=redis_url,
            run_ns=run_ns,
            work_dir=work_dir,
            procs=procs,
            client=client,
            quick=args.quick,
            poll_interval=args.poll_interval,
            compression=not args.no_compression,
            postgres_url=args.postgres_url,
            results_phases=phases,
        )
        for name in names:
            await run_scenario(h, name, chosen[name], data)
    finally:
        await procs.stop_all()
        if client is not None:
            with _suppress_redis():
                data["keys_left"] = await count_keys(client, run_ns)
                if data["keys_left"]:
                    await delete_namespace(client, run_ns)
            await client.aclose()
    data["finished"] = time.time()
    data["wall_time_s"] = round(data["finished"] - started, 1)
    report.add_ratios(data["scenarios"])
    data["targets"] = report.evaluate(data["scenarios"])
    if "results" in data["scenarios"]:
        data["targets"] += resultsreport.evaluate(data["scenarios"]["results"])
    if "floor" in data["scenarios"]:
        data["targets"] += floorreport.evaluate(data["scenarios"]["floor"])
    write_outputs(args, data, results_dir, names)
    return 1 if data["errors"] else 0


def dump_tasks(path: Path) -> None:
    with path.open("a") as f:
        for task in asyncio.all_tasks():
            f.write(f"--- {task.get_name()}\n")
            task.print_stack(file=f)


class _suppress_redis:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, redis.RedisError | OSError)


async def count_keys(client: redis.asyncio.Redis, prefix: str) -> int:
    n = 0
    for pattern in (f"{prefix}*", f"rq:*{prefix}*"):
        async for _ in client.scan_iter(match=pattern, count=1000):
            n += 1
    return n


async def run_scenario(h: Harness, name: str, size: Size, data: dict[str, Any]) -> None:
    """Run one scenario (both modes where the issue asks for them); record failures."""
    runs: list[tuple[str | None, Callable[[], Awaitable[dict[str, Any]]]]]
    if name == "latency":
        runs = [(m, functools.partial(scenarios.latency, h, size, m)) for m in MODES]
    elif name == "idle":
        runs = [(m, functools.partial(scenarios.idle, h, size, m)) for m in MODES]
    elif name == "throughput":
        runs = [(None, functools.partial(scenarios.throughput, h, size))]
    elif name == "connections":
        runs = [(None, functools.partial(scenarios.connections, h, size))]
    elif name == "floor":
        runs = [(None, functools.partial(floor.floor, h, size))]
    elif name == "results":
        runs = [(None, functools.partial(resultspath.results, h, size))]
    else:
        runs = [(None, functools.partial(scenarios.lostbell, h, size))]
    for mode, fn in runs:
        label = f"{name} ({mode})" if mode else name
        print(f"[bench] {label}: running ...", flush=True)
        t = time.time()
        try:
            result = await fn()
        except Exception as exc:  # one scenario failing must not lose the others' figures
            data["errors"][label] = f"{type(exc).__name__}: {exc}"
            print(f"[bench] {label}: FAILED: {exc}", flush=True)
            continue
        result["elapsed_s"] = round(time.time() - t, 1)
        if mode:
            data["scenarios"].setdefault(name, {})[mode] = result
        else:
            data["scenarios"][name] = result
        print(
            f"[bench] {label}: done in {result['elapsed_s']} s — {headline(name, result)}",
            flush=True,
        )


def headline(name: str, r: dict[str, Any]) -> str:
    if name == "latency":
        q = r["latency_ms"]
        return (
            f"p50 {q.get('p50')} ms, p90 {q.get('p90')} ms, p99 {q.get('p99')} ms, max "
            f"{q.get('max')} ms; delivered {r['delivered']}/{r['submitted']}, "
            f"duplicates {r['duplicates']}"
        )
    if name == "throughput":
        return (
            f"dispatched {r['dispatched_per_s']}/s, acknowledged {r['acknowledged_per_s']}/s, "
            f"processed {r['processed_per_s']}/s, backlog {r['backlog_pending_at_end']} "
            f"pending / {r['backlog_results_queue_at_end']} results"
        )
    if name == "idle":
        return (
            f"{r['redis']['commands_per_s']} Redis commands/s ({r['redis']['fcall_per_s']} "
            f"FCALL/s), pods {r['pod_cpu_percent_total']} % CPU"
            + (" [other Redis clients active]" if r["contaminated"] else "")
        )
    if name == "floor":
        return floorreport.headline(r)
    if name == "results":
        failed = r.get("errors") or {}
        return f"{len(r['phases'])} phase(s) done" + (
            f", failed: {', '.join(failed)}" if failed else ""
        )
    if name == "connections":
        return (
            f"{r['connected']} connected, {r['rss_per_connection_kib']} KiB/connection, "
            f"{r['connections_opened_per_s']} connections/s"
        )
    return (
        f"lost {r['lost']} of {r['submitted']}, duplicates {r['duplicates']}, extra delay "
        f"max {r['extra_delay_max_ms']} ms"
    )


def write_outputs(
    args: argparse.Namespace, data: dict[str, Any], results_dir: Path, names: list[str]
) -> None:
    json_path = results_dir / f"bench-{data['run_id']}.json"
    png_path = results_dir / f"bench-{data['run_id']}.png"
    results_png = png_path.with_name(f"bench-{data['run_id']}-results.png")
    five = [n for n in names if n in SCENARIOS]
    if not five:  # the results scenario alone: its own chart is the run's chart
        results_png = png_path
    data["files"] = {"json": _rel(json_path), "png": _rel(png_path)}
    if "results" in data["scenarios"]:
        data["files"]["results_png"] = _rel(results_png)
    floor_md = results_dir / f"floor-{data['run_id']}.md"
    if "floor" in data["scenarios"]:
        data["files"]["markdown"] = _rel(floor_md)
        if not five and "results" not in data["scenarios"]:
            data["files"]["png"] = None  # the floor scenario draws no chart
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    if five:
        report.write_chart(png_path, data)
    if "results" in data["scenarios"]:
        resultsreport.write_chart(results_png, data)
    full = (
        not args.quick
        and five == list(SCENARIOS)
        and not args.no_compression
        and not any(getattr(args, f) is not None for f in ("runners", "duration", "rate"))
    )
    write = args.summary == "yes" or (
        args.summary == "auto" and (full or results_dir.resolve() != DEFAULT_RESULTS.resolve())
    )
    summary = results_dir / "SUMMARY.md"
    if write and not any(n in data["scenarios"] for n in SCENARIOS):
        write = False
    if write:
        report.write_summary(summary, data)
    if "floor" in data["scenarios"]:
        floor_md.write_text(floormd.render(data))
        print(floormd.render_table(data))
        floor_full = not args.quick and all(
            getattr(args, f) is None for f in ("runners", "duration")
        )
        if args.summary == "yes" or (
            args.summary == "auto"
            and (floor_full or results_dir.resolve() != DEFAULT_RESULTS.resolve())
        ):
            floormd.write_summary(summary, data)
            write = True
    # the results block: a full-size run of every phase, or any run into another directory
    results_full = (
        not args.quick
        and set(args.results_phases.split(",")) == set(resultspath.PHASES)
        and not any(
            getattr(args, f) is not None
            for f in ("runners", "duration", "writers", "producers", "drain", "kill_results")
        )
    )
    write_results = "results" in data["scenarios"] and (
        args.summary == "yes"
        or (
            args.summary == "auto"
            and (results_full or results_dir.resolve() != DEFAULT_RESULTS.resolve())
        )
    )
    if write_results:
        resultsreport.write_summary(summary, data)
        write = True
    print()
    for row in data["targets"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
        print(
            f"  {verdict:6} {row['scenario']}: {row['figure']} = {row['value']} {row['unit']} "
            f"(target {row['target']}) {row['note']}"
        )
    for label, error in data["errors"].items():
        print(f"  FAILED {label}: {error}")
    print(
        f"\n[bench] wrote {', '.join(str(f) for f in data['files'].values() if f)}"
        + (f", {_rel(summary)}" if write else " (SUMMARY.md unchanged: partial or quick run)")
        + f" in {data['wall_time_s']} s"
    )


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except deps.MissingDependency as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM
        return 143
