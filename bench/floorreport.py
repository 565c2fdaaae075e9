"""The floor scenario's figures against issue 11's targets (pure; Markdown in ``bench.floormd``).

``evaluate`` turns the scenario's result into rows (``bench.report``'s row shape, so the CLI
prints them with every other target). A figure that was not measured (a step failed, or was not
run) is ``None`` and its verdict "n/a", never a pass.
"""

from __future__ import annotations

import math
from typing import Any

from bench.report import Row, _fmt, _ge, _get, _le, _row

SCENARIO = "floor"
SYSTEM_NAMES = (
    ("pubsub", "pub/sub"),
    ("poll", "poll"),
    ("poll_lockstep", "poll, connected together"),
    ("rq", "rq SimpleWorker"),
)
CHAIN = ("chain", "bare chain (no dispatcher)")  # the floor, not a system: no exactly-once row

DEFINITIONS = (
    (
        "submit → `job`",
        "the producer's clock just before `Client.submit` (one `FCALL` round trip, in a process "
        "of its own) to the `job` frame's arrival at a simulated runner (`bench.sim`, the "
        "reference agent's connection options), same machine clock; pub/sub = "
        "`DISPATCHER_WAKE=pubsub` (the doorbell), poll = `DISPATCHER_WAKE=poll` (every waiting "
        "runner's long poll retries the ready script every `DISPATCHER_POLL_INTERVAL`, 1 s).",
    ),
    (
        "poll phases",
        '"poll": each runner sends its first `ready` a random 0..1 s after connecting '
        "(`bench/phased.py`), so the runners poll at independent phases, as runners that start "
        'and finish jobs at unrelated times do: the honest baseline. "poll, connected '
        'together": every runner connects and sends `ready` in one burst (`bench/sim.py`, as '
        "the other scenarios run); a runner re-readies right after the poll that gave it a job, "
        "so their polls stay nearly in lockstep and N runners wait like one (p50 ≈ T/2). "
        "Pub/sub runs with the phased runners too.",
    ),
    (
        "rq: enqueue → start",
        "plain rq, the peer to beat: the producer's clock just before `Queue.enqueue` to the "
        "first statement of the job function, run by one idle `rq.SimpleWorker` (no fork) in a "
        "process of its own, same Redis, same schedule; the job's return value carries the time.",
    ),
    (
        "bare chain",
        "`bench.chainfloor`, no dispatcher code: a producer `PUBLISH`es at the step's rate "
        "(clock read just before the call), a subscriber process forwards each message as a "
        "WebSocket frame, a receiver process takes its arrival; same machine clock. At 10 or "
        "100 messages/s every process sleeps between messages and each hop pays a wake-up, so "
        "this is the floor of submit → `job` at that rate on this machine.",
    ),
    (
        "Redis commands/s",
        "`INFO commandstats` delta over the idle window ÷ its length, every command of every "
        "client but the harness's own INFO/CLIENT calls, commands run inside functions included; "
        "runners idle in their 30 s long poll, no jobs.",
    ),
    (
        "acknowledged lifecycles/s",
        "terminal `ack` frames the simulated runners received in the window ÷ the window: "
        "`job` → `running` → `completed` → `ack`, 200 runners on 2 pods, a producer keeping "
        "the queue full, result writers running.",
    ),
    (
        "pod RSS per idle runner",
        "(pod RSS with every runner in its long poll - RSS before they connect) ÷ connections, "
        "10,000 runners on one pod.",
    ),
    (
        "exactly once",
        "every submitted job reached exactly one runner (rq: ran exactly once, one result); "
        "lost = submitted but never seen, dup = seen more than once.",
    ),
)


def poll_wait_p50_ms(runners: int, interval_s: float) -> float | None:
    """Median wait for the next poll of *any* of ``runners`` pollers at independent phases.

    With N runners each polling every T s at uniformly random phases, the wait w from a random
    instant to the next poll satisfies P(wait > w) = (1 - w/T)^N, so its median is
    T·(1 - 2^(-1/N)) ≈ 0.69·T/N: the baseline's p50 falls as runners are added.
    """
    if runners <= 0 or interval_s <= 0:
        return None
    return round(interval_s * (1.0 - math.pow(2.0, -1.0 / runners)) * 1000.0, 3)


def _ratio(a: Any, b: Any, digits: int = 1) -> float | None:
    ok = all(isinstance(v, int | float) and not math.isnan(v) for v in (a, b))
    return round(a / b, digits) if ok and b > 0 else None


def _q(r: dict[str, Any], step: str, system: str, q: str) -> Any:
    return _get(r, "runs", step, system, "latency_ms", q)


def _pair(a: Any, b: Any) -> str | None:
    return None if a is None and b is None else f"{_fmt(a)} / {_fmt(b)}"


def ratios(r: dict[str, Any]) -> dict[str, float | None]:
    """Every ratio the issue names (None when a side is missing)."""
    cmds = ("runs", "idle")
    return {
        "small_p50_poll_over_pubsub": _ratio(
            _q(r, "small", "poll", "p50"), _q(r, "small", "pubsub", "p50")
        ),
        "small_p99_poll_over_pubsub": _ratio(
            _q(r, "small", "poll", "p99"), _q(r, "small", "pubsub", "p99")
        ),
        "small_p50_lockstep_over_pubsub": _ratio(
            _q(r, "small", "poll_lockstep", "p50"), _q(r, "small", "pubsub", "p50")
        ),
        "headline_p50_poll_over_pubsub": _ratio(
            _q(r, "headline", "poll", "p50"), _q(r, "headline", "pubsub", "p50")
        ),
        "headline_p99_poll_over_pubsub": _ratio(
            _q(r, "headline", "poll", "p99"), _q(r, "headline", "pubsub", "p99")
        ),
        "headline_p50_pubsub_over_rq": _ratio(
            _q(r, "headline", "pubsub", "p50"), _q(r, "headline", "rq", "p50"), 2
        ),
        "small_p50_pubsub_over_rq": _ratio(
            _q(r, "small", "pubsub", "p50"), _q(r, "small", "rq", "p50"), 2
        ),
        "idle_commands_poll_over_pubsub": _ratio(
            _get(r, *cmds, "poll", "redis", "commands_per_s"),
            _get(r, *cmds, "pubsub", "redis", "commands_per_s"),
        ),
        "idle_fcall_poll_over_pubsub": _ratio(
            _get(r, *cmds, "poll", "redis", "fcall_per_s"),
            _get(r, *cmds, "pubsub", "redis", "fcall_per_s"),
        ),
    }


def _size(r: dict[str, Any], step: str, field: str) -> Any:
    """A field of a step's size; a whole float as an int ("100 jobs/s", not "100.0")."""
    value = _get(r, "plan", step, field)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _contaminated(r: dict[str, Any]) -> str:
    modes = [m for m in ("pubsub", "poll") if _get(r, "runs", "idle", m, "contaminated")]
    if not modes:
        return ""
    return (
        f"; other clients used this Redis during the {'/'.join(modes)} window, their commands "
        "are counted: run with --private-redis"
    )


def _target_rows(r: dict[str, Any], k: dict[str, float | None]) -> list[Row]:
    p50 = _q(r, "headline", "pubsub", "p50")
    p99 = _q(r, "headline", "pubsub", "p99")
    n, pods, rate = (_size(r, "headline", f) for f in ("runners", "pods", "rate"))
    load = f"{_fmt(n)} runners / {_fmt(pods)} pods / {_fmt(rate)} jobs/s"
    small = (
        f"{_fmt(_size(r, 'small', 'runners'))} runners, {_fmt(_size(r, 'small', 'rate'))} jobs/s"
    )
    conn = _get(r, "runs", "connmem")
    per = _get(conn, "rss_per_connection_kib") if isinstance(conn, dict) else None
    acked = _get(r, "runs", "throughput", "acknowledged_per_s")
    return [
        _row(
            SCENARIO,
            f"submit → `job` p50, {load}",
            p50,
            "ms",
            "≤ 1.0 ms",
            _le(p50, 1.0),
            f"bare chain at this rate p50 {_fmt(_q(r, 'headline', 'chain', 'p50'))} ms",
        ),
        _row(
            SCENARIO,
            f"submit → `job` p99, {load}",
            p99,
            "ms",
            "≤ 2.5 ms",
            _le(p99, 2.5),
            f"bare chain at this rate p99 {_fmt(_q(r, 'headline', 'chain', 'p99'))} ms",
        ),
        _row(
            SCENARIO,
            "p50 ÷ plain rq SimpleWorker p50, same load",
            k["headline_p50_pubsub_over_rq"],
            "x",
            "≤ 0.5",
            _le(k["headline_p50_pubsub_over_rq"], 0.5),
            f"rq p50 {_fmt(_q(r, 'headline', 'rq', 'p50'))} ms; its one worker used "
            f"{_fmt(_get(r, 'runs', 'headline', 'rq', 'cpu_percent', 'worker0'))} % of a core: "
            "near 100 % it cannot keep up and its latency is queueing",
        ),
        _row(
            SCENARIO,
            f"{small}: poll p50 ÷ pub/sub p50",
            k["small_p50_poll_over_pubsub"],
            "x",
            "≥ 200",
            _ge(k["small_p50_poll_over_pubsub"], 200),
            f"poll p50 {_fmt(_q(r, 'small', 'poll', 'p50'))} ms",
        ),
        _row(
            SCENARIO,
            f"{_fmt(_size(r, 'idle', 'runners'))} idle runners: Redis commands/s poll ÷ pub/sub",
            k["idle_commands_poll_over_pubsub"],
            "x",
            "≥ 1,000",
            _ge(k["idle_commands_poll_over_pubsub"], 1000),
            f"FCALL ÷ {_fmt(k['idle_fcall_poll_over_pubsub'])}" + _contaminated(r),
        ),
        _row(
            SCENARIO,
            f"pod RSS per idle runner, {_fmt(_size(r, 'connmem', 'runners'))} on one pod",
            per,
            "KiB",
            "≤ 20 KiB",
            _le(per, 20.0),
            f"by {conn.get('source')}" if isinstance(conn, dict) else "",
        ),
        _row(
            SCENARIO,
            f"acknowledged full lifecycles/s, {_fmt(_size(r, 'throughput', 'pods'))} pods",
            acked,
            "jobs/s",
            "≥ 2,000",
            _ge(acked, 2000),
            _cpu_per_lifecycle(r, acked),
        ),
    ]


def _cpu_per_lifecycle(r: dict[str, Any], acked: float | None) -> str:
    """CPU ms per acknowledged lifecycle, the whole machine's and Redis's and the pods': on a
    host whose speed varies, a slow run shows as every share up at once, and Redis's share is
    what a shard's capacity follows."""
    cpu = _get(r, "runs", "throughput", "cpu_percent")
    if not isinstance(cpu, dict) or not acked:
        return ""

    def ms(*prefixes: str) -> str:
        percent = sum(float(v) for k, v in cpu.items() if k.startswith(prefixes))
        return _fmt(round(percent * 10 / acked, 3))  # % of a core x 10 ms/s ÷ jobs/s

    return (
        f"CPU per lifecycle: machine {ms('machine')} ms, Redis {ms('redis')} ms, "
        f"pods {ms('pod')} ms"
    )


def _side_rows(r: dict[str, Any], k: dict[str, float | None]) -> list[Row]:
    out = []
    for step, what in (("small", "(a)"), ("headline", "(b)")):
        n = _fmt(_size(r, step, "runners"))
        for system, name in (*SYSTEM_NAMES, CHAIN):
            value = _pair(_q(r, step, system, "p50"), _q(r, step, system, "p99"))
            out.append(
                _row(SCENARIO, f"{what} {n} runners: {name} p50 / p99", value, "ms", "—", None)
            )
    out.append(
        _row(
            SCENARIO,
            "(a) p50 poll, connected together ÷ pub/sub",
            k["small_p50_lockstep_over_pubsub"],
            "x",
            "—",
            None,
        )
    )
    out.append(
        _row(SCENARIO, "(b) p50 poll ÷ pub/sub", k["headline_p50_poll_over_pubsub"], "x", "—", None)
    )
    out.append(
        _row(
            SCENARIO,
            "(b) p99 poll ÷ pub/sub",
            k["headline_p99_poll_over_pubsub"],
            "x",
            "—",
            None,
        )
    )
    for mode in ("pubsub", "poll"):
        cps = _get(r, "runs", "idle", mode, "redis", "commands_per_s")
        out.append(_row(SCENARIO, f"(b) idle Redis commands/s, {mode}", cps, "cmd/s", "—", None))
    return out


def _once_rows(r: dict[str, Any]) -> list[Row]:
    out = []
    for step in ("small", "headline"):
        for system, _ in SYSTEM_NAMES:
            run = _get(r, "runs", step, system)
            if not isinstance(run, dict):
                continue
            lost, dup = run.get("lost"), run.get("duplicates")
            unknown = run.get("unknown", 0)
            ok = lost == 0 and dup == 0 and unknown == 0 and run.get("submitted", 0) > 0
            value = f"{lost} / {dup} of {run.get('submitted')}"
            out.append(_row(SCENARIO, f"lost / dup, {step} {system}", value, "", "0 / 0", ok))
    return out


def evaluate(r: dict[str, Any]) -> list[Row]:
    """Issue 11's targets, the side-by-side figures (no target) and exactly-once checks."""
    k = ratios(r)
    return [*_target_rows(r, k), *_side_rows(r, k), *_once_rows(r)]


def headline(r: dict[str, Any]) -> str:
    k = ratios(r)
    return (
        f"p50 {_fmt(_q(r, 'headline', 'pubsub', 'p50'))} ms (rq "
        f"{_fmt(_q(r, 'headline', 'rq', 'p50'))} ms, "
        f"ratio {_fmt(k['headline_p50_pubsub_over_rq'])})"
        f"; small poll÷pub/sub p50 {_fmt(k['small_p50_poll_over_pubsub'])}x; idle commands "
        f"poll÷pub/sub {_fmt(k['idle_commands_poll_over_pubsub'])}x; "
        f"{len(r.get('errors', {}))} step(s) failed"
    )


def _verdict(row: Row) -> str:
    if row["met"] is None:
        return "—" if row["target"] == "—" else "n/a"
    return "yes" if row["met"] else "**no**"


def table(rows: list[Row]) -> list[str]:
    """``measure | measured | target | met?`` for the given rows."""
    out = ["| measure | measured | target | met? |", "|---|---|---|---|"]
    for row in rows:
        value = f"{_fmt(row['value'])} {row['unit']}".strip()
        if row["note"]:
            value += f" ({row['note']})"
        out.append(f"| {row['figure']} | {value} | {row['target']} | {_verdict(row)} |")
    return out
