"""The floor scenario's Markdown: its own report (``floor-<run>.md``) and its SUMMARY.md block.

Pure text from the run's JSON-ready dict; ``write_summary`` is the only function touching a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.floorreport import (
    DEFINITIONS,
    SCENARIO,
    _q,
    _size,
    poll_wait_p50_ms,
    table,
)
from bench.report import _fmt, _get

START = "<!-- bench:floor:start -->"
END = "<!-- bench:floor:end -->"
NOTES_HEADER = "## Notes kept across runs"

SYSTEMS = (
    ("pubsub", "dispatcher, pub/sub"),
    ("poll", "dispatcher, poll 1 s"),
    ("poll_lockstep", "dispatcher, poll 1 s, connected together"),
    ("rq", "plain rq"),
)


def _latency_table(r: dict[str, Any], step: str) -> list[str]:
    out = [
        "| system | p50 ms | p90 ms | p99 ms | max ms | delivered / submitted | lost | dup | "
        "machine busy % (others) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for system, name in SYSTEMS:
        run = _get(r, "runs", step, system)
        if not isinstance(run, dict):
            out.append(f"| {name} | not measured ({_get(r, 'errors', f'{step}/{system}')}) |")
            continue
        q = run["latency_ms"]
        cpu = run.get("cpu_percent", {})
        out.append(
            f"| {name} | {_fmt(q.get('p50'))} | {_fmt(q.get('p90'))} | {_fmt(q.get('p99'))} | "
            f"{_fmt(q.get('max'))} | {run['delivered']} / {run['submitted']} | {run['lost']} | "
            f"{run['duplicates']} | {_fmt(cpu.get('machine'))} ({_fmt(cpu.get('others'))}) |"
        )
    return out


def _idle_table(r: dict[str, Any]) -> list[str]:
    out = [
        "| mode | Redis commands/s | FCALL/s | pod CPU % (sum) | Redis CPU % | other clients |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("pubsub", "poll"):
        m = _get(r, "runs", "idle", mode)
        if not isinstance(m, dict):
            out.append(f"| {mode} | not measured ({_get(r, 'errors', f'idle/{mode}')}) |")
            continue
        red = m["redis"]
        out.append(
            f"| {mode} | {_fmt(red['commands_per_s'])} | {_fmt(red['fcall_per_s'])} | "
            f"{_fmt(m['pod_cpu_percent_total'])} | {_fmt(red['redis_cpu_percent'])} | "
            f"{'yes: counts include them' if m.get('contaminated') else 'none'} |"
        )
    return out


def _poll_restated(r: dict[str, Any]) -> list[str]:
    out = [
        "## The poll baseline, restated",
        "",
        "A waiting runner in poll mode retries the ready script every interval T (1 s). With N "
        "runners waiting at independent phases, *some* runner polls every T/N on average: a job "
        "waits for the next poll of any of them, median T·(1 - 2^(-1/N)) ≈ 0.69·T/N. So the "
        "baseline's p50 is low with many pollers, and it pays N/T ready calls per second for it "
        "— its cost, not its latency, is what grows. Runners connected in one burst poll nearly "
        "in lockstep instead and wait like a single poller (p50 ≈ T/2 whatever N): a harness "
        "artefact that flatters the pub/sub ÷ poll ratio, shown here beside the honest figure.",
        "",
        "| runners waiting | poll p50, model (independent phases) | poll p50, measured | "
        "poll p50, connected together | ready calls/s, model (N/T) | FCALL/s measured (idle) |",
        "|---|---|---|---|---|---|",
    ]
    interval = r.get("poll_interval_s") or 1.0
    for step in ("small", "headline"):
        n = _size(r, step, "runners")
        fcall = _get(r, "runs", "idle", "poll", "redis", "fcall_per_s")
        calls = round(n / interval, 1) if isinstance(n, int) else None
        out.append(
            f"| {_fmt(n)} | {_fmt(poll_wait_p50_ms(n or 0, interval))} ms | "
            f"{_fmt(_q(r, step, 'poll', 'p50'))} ms | "
            f"{_fmt(_q(r, step, 'poll_lockstep', 'p50'))} ms | {_fmt(calls)} | "
            f"{_fmt(fcall) if step == 'headline' else '—'} |"
        )
    return out


def render(data: dict[str, Any]) -> str:
    """The run's own report (``floor-<run>.md``)."""
    env = data["environment"]
    r = data["scenarios"][SCENARIO]
    rows = [row for row in data["targets"] if row["scenario"] == SCENARIO]
    small = f"{_fmt(_size(r, 'small', 'runners'))} idle runners, {_fmt(_size(r, 'small', 'rate'))}"
    head = f"{_fmt(_size(r, 'headline', 'runners'))} idle runners on "
    head += f"{_fmt(_size(r, 'headline', 'pods'))} pods, {_fmt(_size(r, 'headline', 'rate'))}"
    load = r.get("loadavg", {})
    out = [
        f"# Dispatch at the floor (issue 11) — run `{data['run_id']}`",
        "",
        f"{data['started_iso']}: {env['cpu_count']} CPUs ({env.get('cpu_model', '?')}), Python "
        f"{env['python']}, {env['redis_server']} {env['redis_version']}"
        f"{' (private, started for this run)' if env.get('private_redis') else ''}, commit "
        f"`{env['git_commit'][:12]}`{' (uncommitted changes)' if env['git_dirty'] else ''}. "
        f"Command: `{data['command']}`. Load average (1/5/15 min) at the start "
        f"{_loads(load.get('start'))}, at the end {_loads(load.get('end'))}: other work on this "
        "machine shares its CPUs; the ratios within this run are the comparable figures.",
        "",
        "## What each measure is",
        "",
        *[f"- **{name}**: {text}" for name, text in DEFINITIONS],
        "",
        "## Against the targets (one run, side by side)",
        "",
        *table(rows),
        "",
        f"## (a) {small} jobs/s, {_fmt(_size(r, 'small', 'duration'))} s",
        "",
        *_latency_table(r, "small"),
        "",
        f"## (b) {head} jobs/s, {_fmt(_size(r, 'headline', 'duration'))} s",
        "",
        *_latency_table(r, "headline"),
        "",
        f"Idle, {_fmt(_size(r, 'idle', 'runners'))} runners, "
        f"{_fmt(_size(r, 'idle', 'duration'))} s, no jobs:",
        "",
        *_idle_table(r),
        "",
        "## (c) The peer to beat",
        "",
        "Plain rq (`bench/peers.py`): one idle `SimpleWorker`, the job runs in the worker's "
        "process; measured from the `enqueue` call to the job function's first statement, under "
        'the same open-loop schedule as the dispatcher\'s producer (rows "plain rq" above). The '
        "worker logs at WARNING (rq's default INFO writes a line before each job: the quieter "
        "worker is the stronger peer).",
        "",
        *_poll_restated(r),
    ]
    out += _hook_and_errors(r)
    return "\n".join(out) + "\n"


def _loads(v: Any) -> str:
    return " / ".join(f"{x:.2f}" for x in v) if isinstance(v, list | tuple) else "—"


def _hook_and_errors(r: dict[str, Any]) -> list[str]:
    out: list[str] = []
    conn = _get(r, "runs", "connmem")
    if isinstance(conn, dict):
        out += ["", f"Pod memory per idle runner measured by `{conn.get('source')}`."]
        if conn.get("hook_note"):
            out += ["", conn["hook_note"]]
    for step, error in r.get("errors", {}).items():
        out += ["", f"Step {step} FAILED: {error}"]
    return out


def block(data: dict[str, Any]) -> str:
    """The floor block of SUMMARY.md (between its own markers)."""
    env = data["environment"]
    rows = [row for row in data["targets"] if row["scenario"] == SCENARIO]
    load = data["scenarios"][SCENARIO].get("loadavg", {})
    out = [
        START,
        "",
        "## 7. Dispatch at the floor (issue 11) — latest run",
        "",
        f"Run `{data['run_id']}` on {data['started_iso']}, commit `{env['git_commit'][:12]}`"
        f"{' (uncommitted changes)' if env['git_dirty'] else ''}, load average "
        f"{_loads(load.get('start'))} → {_loads(load.get('end'))}. Command: `{data['command']}`. "
        f"Report with every definition: `{data['files'].get('markdown')}`.",
        "",
        *table(rows),
        "",
        END,
    ]
    return "\n".join(out)


def write_summary(path: Path, data: dict[str, Any]) -> None:
    """Replace the floor block of ``path`` (or add it before the notes), keeping the rest."""
    text = path.read_text() if path.exists() else "# Benchmark summary\n"
    new = block(data)
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + new + rest.split(END, 1)[1]
    elif NOTES_HEADER in text:
        head, tail = text.split(NOTES_HEADER, 1)
        text = head + new + "\n\n" + NOTES_HEADER + tail
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    path.write_text(text)


def render_table(data: dict[str, Any]) -> str:
    """What the CLI prints at the end of a floor run: the targets table."""
    rows = [row for row in data["targets"] if row["scenario"] == SCENARIO]
    return "\n".join(["", f"Dispatch at the floor, run {data['run_id']}:", "", *table(rows)])
