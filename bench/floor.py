"""``python -m bench --scenario floor``: issue 11's figures, side by side in one run.

Steps, one after the other on the same Redis (each in a fresh namespace, its processes stopped
and its keys deleted before the next):

- (a) ``small``: 10 idle runners on 2 pods, 10 jobs/s for 20 s — pub/sub, poll, plain rq, and
  the bare chain at that rate (``bench.chainfloor``: PUBLISH → a process → a WebSocket frame,
  no dispatcher code: the floor the latencies stand on);
- (b) ``headline``: 1,000 idle runners on 2 pods, 100 jobs/s for 20 s — pub/sub, poll, plain
  rq, the bare chain (the load of the issue's latency targets), and ``idle``: the same 1,000
  runners with no jobs, Redis commands/s in both modes;
- in (a) and (b) the runners poll at independent phases (``bench.phased``: the honest baseline),
  and poll mode runs once more with runners connected in one burst (``poll_lockstep``), the way
  the other scenarios run it, to show how much that flatters the pub/sub ÷ poll ratio;
- ``throughput``: acknowledged full lifecycles/s on 2 pods (``scenarios.throughput``);
- ``connmem``: pod RSS per idle runner, 10,000 on one pod — ``python -m bench.connmem`` when
  that module exists (see ``CONNMEM_HOOK``), else ``scenarios.connections`` (the same RSS delta).

The dispatcher's steps reuse ``bench.scenarios`` as they are; plain rq is ``bench.peers``. A step
that fails is recorded and the others still run. Targets and Markdown: ``bench.floorreport``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib.util
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import peers, scenarios
from bench.harness import Harness
from bench.phased import PhasedHarness
from bench.scenarios import Size

# The pod-memory hook: the module another engineer owns, run through its command line (its stable
# surface): ``python -m bench.connmem --runners N --per-process P --redis-url URL --work-dir DIR
# --out FILE`` writes a JSON object holding ``rss_per_connection_kib``. When the module is absent
# or the run fails, ``scenarios.connections`` measures the same RSS delta, and the report says why.
CONNMEM_HOOK = "bench.connmem"
CONNMEM_TIMEOUT = 900.0  # s: 10,000 runners connect in ~15 s on an idle 2-core machine


@dataclass(frozen=True)
class Plan:
    """The sizes of every step of one floor run."""

    small: Size
    headline: Size
    idle: Size
    throughput: Size
    connmem: Size


FULL: dict[str, Size] = {
    "floor": Size(runners=1000, pods=2, duration=20, rate=100, writers=1, per_process=500)
}
QUICK: dict[str, Size] = {
    "floor": Size(runners=6, pods=2, duration=1.5, rate=20, per_process=3, settle=0.2)
}


def plan(headline: Size, quick: bool) -> Plan:
    """Every step's size from the headline step's (``--runners``/``--duration`` change it)."""
    base = scenarios.QUICK if quick else scenarios.FULL
    small_runners = 3 if quick else 10
    return Plan(
        small=dataclasses.replace(
            headline, runners=small_runners, rate=headline.rate / 10, per_process=small_runners
        ),
        headline=headline,
        idle=dataclasses.replace(
            headline, writers=0, duration=headline.duration if quick else 30.0
        ),
        throughput=base["throughput"],
        connmem=base["connections"],
    )


Step = tuple[str, Callable[[], Awaitable[dict[str, Any]]]]


def steps(h: Harness, p: Plan) -> list[Step]:
    """Both latency loads: pub/sub and poll with runners at independent phases (the honest
    baseline, ``bench.phased``), poll with runners connected in one burst (``bench.sim``, as the
    other scenarios run it: nearly in lockstep), then plain rq."""
    phased = PhasedHarness.of(h, h.poll_interval)
    out: list[Step] = []
    for name, size in (("small", p.small), ("headline", p.headline)):
        out += [
            (f"{name}/pubsub", functools.partial(scenarios.latency, phased, size, "pubsub")),
            (f"{name}/poll", functools.partial(scenarios.latency, phased, size, "poll")),
            (f"{name}/poll_lockstep", functools.partial(scenarios.latency, h, size, "poll")),
            (f"{name}/rq", functools.partial(peers.rq_peer, h, size, name)),
            (f"{name}/chain", functools.partial(chain, h, size)),
        ]
    out += [
        ("idle/pubsub", functools.partial(scenarios.idle, h, p.idle, "pubsub")),
        ("idle/poll", functools.partial(scenarios.idle, h, p.idle, "poll")),
        ("throughput", functools.partial(scenarios.throughput, h, p.throughput)),
        ("connmem", functools.partial(connmem, h, p.connmem)),
    ]
    return out


async def chain(h: Harness, size: Size) -> dict[str, Any]:
    """The bare chain at the step's rate (``bench.chainfloor``): the floor its latency stands on."""
    work = h.work_dir / "chainfloor"
    work.mkdir(exist_ok=True)
    count = max(50, int(size.rate * size.duration))
    args = ["--redis-url", h.redis_url, "--rate", f"{size.rate:g}", "--count", str(count)]
    out = work / f"rate-{size.rate:g}.json"
    result = await _json_child(h, "chainfloor", "bench.chainfloor", args, out, size.duration + 120)
    return {**result, "latency_ms": {"p50": result["p50_ms"], "p99": result["p99_ms"]}}


async def _json_child(
    h: Harness, name: str, module: str, args: list[str], out: Path, timeout: float
) -> dict[str, Any]:
    """Run ``python -m module args --out out`` under the harness; the JSON object it wrote."""
    child = await h.procs.python(name, module, *args, "--out", str(out), env={})
    try:
        code = await asyncio.wait_for(child.proc.wait(), timeout)
    finally:
        await h.procs.stop(child, 10)
    if code != 0 or not out.exists():
        raise child.failure(f"exited {code} without its result")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


async def connmem(h: Harness, size: Size) -> dict[str, Any]:
    """Pod RSS per idle runner: the hook when it is there, else ``scenarios.connections``."""
    if importlib.util.find_spec(CONNMEM_HOOK) is None:
        note = f"`{CONNMEM_HOOK}` not present: measured by `bench.scenarios.connections`."
    else:
        try:
            return {**await _run_hook(h, size), "source": CONNMEM_HOOK}
        except Exception as exc:  # a hook with another shape must not lose the figure
            note = f"`{CONNMEM_HOOK}` failed ({type(exc).__name__}: {exc}); fallback used."
    result = await scenarios.connections(h, size)
    return {**result, "source": "bench.scenarios.connections", "hook_note": note}


async def _run_hook(h: Harness, size: Size) -> dict[str, Any]:
    work = h.work_dir / "connmem"
    work.mkdir(exist_ok=True)
    args = ["--runners", str(size.runners), "--per-process", str(size.per_process)]
    args += ["--redis-url", h.redis_url, "--work-dir", str(work)]
    result = await _json_child(
        h, "connmem", CONNMEM_HOOK, args, work / "result.json", CONNMEM_TIMEOUT
    )
    if not isinstance(result.get("rss_per_connection_kib"), int | float):
        raise ValueError("its result has no rss_per_connection_kib")
    return result


def _put(runs: dict[str, Any], step: str, result: dict[str, Any]) -> None:
    group, _, system = step.partition("/")
    if system:
        runs.setdefault(group, {})[system] = result
    else:
        runs[group] = result


async def floor(h: Harness, size: Size) -> dict[str, Any]:
    """Run every step; a failing step is recorded, the others still run."""
    p = plan(size, h.quick)
    out: dict[str, Any] = {
        "plan": {f.name: scenarios.size_dict(getattr(p, f.name)) for f in dataclasses.fields(p)},
        "poll_interval_s": h.poll_interval,
        "runs": {},
        "errors": {},
        "elapsed_s": {},
        "loadavg": {"start": list(os.getloadavg())},
    }
    for step, run in steps(h, p):
        h.log(f"floor: {step}")
        print(f"[bench] floor/{step}: running ...", flush=True)
        t = time.time()
        try:
            result = await run()
        except Exception as exc:  # one step failing must not lose the others' figures
            out["errors"][step] = f"{type(exc).__name__}: {exc}"
            print(f"[bench] floor/{step}: FAILED: {exc}", flush=True)
            continue
        out["elapsed_s"][step] = round(time.time() - t, 1)
        _put(out["runs"], step, result)
        print(f"[bench] floor/{step}: done in {out['elapsed_s'][step]} s", flush=True)
    out["loadavg"]["end"] = list(os.getloadavg())
    if out["errors"] and not out["runs"]:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in out["errors"].items()))
    return out
