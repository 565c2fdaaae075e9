"""Targets, the Markdown summary and the PNG chart of one run."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from bench import deps

AUTO_START = "<!-- bench:auto:start -->"
AUTO_END = "<!-- bench:auto:end -->"
NOTES_HEADER = """
## Notes kept across runs

(Everything below the generated block is kept when `python -m bench` rewrites this file:
profiling findings and before/after figures go here.)
"""

Row = dict[str, Any]


def _get(data: dict[str, Any], *path: str) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b <= 0:
        return None
    return round(a / b, 1)


def add_ratios(scenarios: dict[str, Any]) -> None:
    """Poll-mode figure ÷ pub/sub figure, for the scenarios run in both modes."""
    lat = scenarios.get("latency")
    if isinstance(lat, dict) and "pubsub" in lat and "poll" in lat:
        lat["ratio_poll_over_pubsub"] = {
            q: _ratio(_get(lat, "poll", "latency_ms", q), _get(lat, "pubsub", "latency_ms", q))
            for q in ("p50", "p90", "p99", "max")
        }
    idle = scenarios.get("idle")
    if isinstance(idle, dict) and "pubsub" in idle and "poll" in idle:
        idle["ratio_poll_over_pubsub"] = {
            "commands_per_s": _ratio(
                _get(idle, "poll", "redis", "commands_per_s"),
                _get(idle, "pubsub", "redis", "commands_per_s"),
            ),
            "fcall_per_s": _ratio(
                _get(idle, "poll", "redis", "fcall_per_s"),
                _get(idle, "pubsub", "redis", "fcall_per_s"),
            ),
            "pod_cpu_percent": _ratio(
                _get(idle, "poll", "pod_cpu_percent_total"),
                _get(idle, "pubsub", "pod_cpu_percent_total"),
            ),
        }


def _row(
    scenario: str, figure: str, value: Any, unit: str, target: str, ok: bool | None, note: str = ""
) -> Row:
    return {
        "scenario": scenario,
        "figure": figure,
        "value": value,
        "unit": unit,
        "target": target,
        "met": ok,
        "note": note,
    }


def _le(value: Any, limit: float) -> bool | None:
    return None if not isinstance(value, int | float) or math.isnan(value) else value <= limit


def _ge(value: Any, limit: float) -> bool | None:
    return None if not isinstance(value, int | float) or math.isnan(value) else value >= limit


def evaluate(s: dict[str, Any]) -> list[Row]:
    """Every figure the issue sets a target for, measured against it."""
    rows: list[Row] = []
    if "latency" in s:
        p50 = _get(s, "latency", "pubsub", "latency_ms", "p50")
        p99 = _get(s, "latency", "pubsub", "latency_ms", "p99")
        ratio = _get(s, "latency", "ratio_poll_over_pubsub", "p50")
        poll50 = _get(s, "latency", "poll", "latency_ms", "p50")
        rows += [
            _row("latency", "p50 (pub/sub)", p50, "ms", "≤ 1 ms", _le(p50, 1.0)),
            _row("latency", "p99 (pub/sub)", p99, "ms", "≤ 5 ms", _le(p99, 5.0)),
            _row(
                "latency",
                "p50 poll ÷ p50 pub/sub",
                ratio,
                "x",
                "≥ 200x",
                _ge(ratio, 200),
                f"poll p50 {poll50} ms",
            ),
        ]
        for mode in ("pubsub", "poll"):
            lost = _get(s, "latency", mode, "lost")
            dup = _get(s, "latency", mode, "duplicates")
            if lost is not None:
                rows.append(
                    _row(
                        "latency",
                        f"lost / duplicated ({mode})",
                        f"{lost} / {dup}",
                        "",
                        "0 / 0",
                        lost == 0 and dup == 0,
                    )
                )
    if "throughput" in s:
        acked = _get(s, "throughput", "acknowledged_per_s")
        processed = _get(s, "throughput", "processed_per_s")
        rows += [
            _row(
                "throughput",
                "acknowledged",
                acked,
                "jobs/s",
                "≥ 2,000 jobs/s",
                _ge(acked, 2000),
                f"dispatched {_get(s, 'throughput', 'dispatched_per_s')}/s",
            ),
            _row(
                "throughput",
                "processed by result writers",
                processed,
                "jobs/s",
                "≥ 1,000 jobs/s",
                _ge(processed, 1000),
                f"results backlog at end {_get(s, 'throughput', 'backlog_results_queue_at_end')}",
            ),
        ]
    if "idle" in s:
        total = _get(s, "idle", "pubsub", "redis", "commands_per_s")
        fcall = _get(s, "idle", "pubsub", "redis", "fcall_per_s")
        renew = _get(s, "idle", "pubsub", "long_poll_renewals_per_s")
        pods = _get(s, "idle", "pubsub", "pods") or 0
        # every pod ticks once per reconcile interval (1 s by default); the rest grows with runners
        per_runner = None if fcall is None else round(max(0.0, fcall - pods), 2)
        contaminated = _get(s, "idle", "pubsub", "contaminated")
        note = f"of which FCALL {fcall}/s"
        if contaminated:
            note += "; other clients were active on this Redis (counts include them)"
        rows += [
            _row(
                "idle",
                "Redis commands/s, all (pub/sub)",
                total,
                "cmd/s",
                "≤ 5 /s",
                _le(total, 5.0),
                note,
            ),
            _row(
                "idle",
                "runner-dependent Redis calls (FCALL/s beyond 1 tick/s per pod)",
                per_runner,
                "FCALL/s",
                "≈ 0 (not growing with runners)",
                _le(per_runner, 0.5),
                f"{renew} long-poll renewals/s answered by the pods without Redis (linger)",
            ),
        ]
    if "connections" in s:
        per = _get(s, "connections", "rss_per_connection_kib")
        rows.append(
            _row(
                "connections",
                "pod RSS per idle runner",
                per,
                "KiB",
                "≤ 30 KiB",
                _le(per, 30.0),
                f"{_get(s, 'connections', 'connections_opened_per_s')} connections/s",
            )
        )
    if "lostbell" in s:
        lost = _get(s, "lostbell", "lost")
        extra = _get(s, "lostbell", "extra_delay_max_ms")
        rows += [
            _row(
                "lost doorbell",
                "jobs lost",
                lost,
                "jobs",
                "0",
                lost == 0 if lost is not None else None,
                f"duplicates {_get(s, 'lostbell', 'duplicates')}",
            ),
            _row(
                "lost doorbell",
                "extra delay before delivery (max)",
                extra,
                "ms",
                "≤ 1,500 ms",
                _le(extra, 1500.0),
            ),
        ]
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _mark(ok: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "n/a"}[ok]


def _lat_table(lat: dict[str, Any]) -> list[str]:
    lines = [
        "| mode | p50 ms | p90 ms | p99 ms | max ms | submitted | delivered | lost | dup |"
        " submit call p50 ms | pod CPU % | machine busy % (others) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("pubsub", "poll"):
        m = lat.get(mode)
        if not isinstance(m, dict):
            continue
        q = m["latency_ms"]
        cpu = m.get("pod_cpu_percent_total")
        machine = _get(m, "cpu_percent", "machine")
        others = _get(m, "cpu_percent", "others")
        lines.append(
            f"| {mode} | {_fmt(q.get('p50'))} | {_fmt(q.get('p90'))} | "
            f"{_fmt(q.get('p99'))} | {_fmt(q.get('max'))} | {m['submitted']} | "
            f"{m['delivered']} | {m['lost']} | {m['duplicates']} | "
            f"{_fmt(_get(m, 'submit_call_ms', 'p50'))} | {_fmt(cpu)} | "
            f"{_fmt(machine)} ({_fmt(others)}) |"
        )
    r = lat.get("ratio_poll_over_pubsub")
    if r:
        lines.append("")
        lines.append(
            f"Ratio poll ÷ pub/sub: p50 {_fmt(r['p50'])}x, p90 {_fmt(r['p90'])}x, "
            f"p99 {_fmt(r['p99'])}x, max {_fmt(r['max'])}x."
        )
    return lines


def render_summary(data: dict[str, Any]) -> str:
    """The generated block of SUMMARY.md (between the markers)."""
    env = data["environment"]
    s = data["scenarios"]
    rows = data["targets"]
    out = [
        AUTO_START,
        "",
        f"Run `{data['run_id']}` on {data['started_iso']}: {env['cpu_count']} CPUs, "
        f"Python {env['python']}, {env['redis_server']} {env['redis_version']}, commit "
        f"`{env['git_commit'][:12]}`{' (uncommitted changes)' if env['git_dirty'] else ''}, "
        f"wall time {data['wall_time_s']:.0f} s.",
        "",
        f"Command: `{data['command']}` — reproduce with `make bench` "
        "(or `.venv/bin/python -m bench`; `--help` for scenarios and sizes). "
        f"Files: `{data['files']['json']}`, `{data['files']['png']}`.",
        "",
        "Timings on this shared 2-core machine are noisy (±25 %): compare the two modes of one "
        "run (the ratios) rather than absolute numbers across runs.",
        "",
        "## Against the targets",
        "",
        "| scenario | figure | measured | target | verdict | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['scenario']} | {r['figure']} | {_fmt(r['value'])} {r['unit']} | "
            f"{r['target']} | {_mark(r['met'])} | {r['note']} |"
        )
    met = sum(1 for r in rows if r["met"] is True)
    out += ["", f"{met} of {len(rows)} targets met.", ""]
    if "latency" in s:
        size = s["latency"].get("pubsub") or s["latency"].get("poll") or {}
        out += [
            f"## 1. Latency — {size.get('runners')} idle runners on {size.get('pods')} pods, "
            f"{size.get('rate')} jobs/s for {size.get('duration_s')} s",
            "",
            "Submit call → `job` frame at the runner (same clock).",
            "",
        ]
        out += [*_lat_table(s["latency"]), ""]
    if "throughput" in s:
        t = s["throughput"]
        out += [
            f"## 2. Throughput — {t['runners']} runners finishing at once, {t['pods']} pods, "
            f"{t['writers']} result writers, {t['producers']} producer(s), "
            f"{t['duration_s']:.0f} s",
            "",
            "| submitted/s | dispatched/s | acknowledged/s | processed/s | pending at end | "
            "results queue at end | duplicates |",
            "|---|---|---|---|---|---|---|",
            f"| {_fmt(t['submitted_per_s'])} | {_fmt(t['dispatched_per_s'])} | "
            f"{_fmt(t['acknowledged_per_s'])} | {_fmt(t['processed_per_s'])} | "
            f"{_fmt(t['backlog_pending_at_end'])} | "
            f"{_fmt(t['backlog_results_queue_at_end'])} | {t['duplicates']} |",
            "",
            "CPU % by process over the window (100 % = one core): "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in t["cpu_percent"].items())
            + ".",
            "",
        ]
    if "idle" in s:
        i = s["idle"]
        size = i.get("pubsub") or i.get("poll") or {}
        out += [
            f"## 3. Idle — {size.get('runners')} idle runners on {size.get('pods')} pods, "
            f"{size.get('duration_s', 0):.0f} s, runners' poll_timeout "
            f"{size.get('poll_timeout_s')} s",
            "",
            "| mode | Redis commands/s (all) | FCALL/s | inside functions/s | "
            "long-poll renewals/s | pod CPU % (sum) | Redis CPU % |",
            "|---|---|---|---|---|---|---|",
        ]
        for mode in ("pubsub", "poll"):
            m = i.get(mode)
            if not isinstance(m, dict):
                continue
            r = m["redis"]
            out.append(
                f"| {mode} | {_fmt(r['commands_per_s'])} | {_fmt(r['fcall_per_s'])} | "
                f"{_fmt(r['inside_functions_per_s'])} | "
                f"{_fmt(m['long_poll_renewals_per_s'])} | "
                f"{_fmt(m['pod_cpu_percent_total'])} | {_fmt(r['redis_cpu_percent'])} |"
            )
        ratio = i.get("ratio_poll_over_pubsub")
        if ratio:
            out += [
                "",
                f"Ratio poll ÷ pub/sub: commands {_fmt(ratio['commands_per_s'])}x, "
                f"FCALL {_fmt(ratio['fcall_per_s'])}x, pod CPU "
                f"{_fmt(ratio['pod_cpu_percent'])}x.",
            ]
        for mode in ("pubsub", "poll"):
            m = i.get(mode)
            if isinstance(m, dict) and m.get("contaminated"):
                out += [
                    "",
                    f"Warning ({mode}): other clients used this Redis during the window "
                    f"({len(m['foreign_clients'])} seen); the counts include their "
                    "commands. Use `--private-redis` for clean figures.",
                ]
        out.append("")
    if "connections" in s:
        c = s["connections"]
        out += [
            f"## 4. Connections — {c['runners']:,} idle runners on one pod",
            "",
            f"Connected {c['connected']:,}; pod RSS {_fmt(c['pod_rss_before_mib'])} → "
            f"{_fmt(c['pod_rss_after_mib'])} MiB = **{_fmt(c['rss_per_connection_kib'])} KiB "
            f"per connection**; {_fmt(c['connections_opened_per_s'])} connections opened/s "
            f"(all open after {_fmt(c['ramp_s'])} s, all in their long poll after "
            f"{_fmt(c['idle_after_s'])} s); pod CPU during the ramp "
            f"{_fmt(c['pod_cpu_percent_during_ramp'])} %.",
            "",
        ]
    if "lostbell" in s:
        b = s["lostbell"]
        out += [
            f"## 5. Lost doorbell — {b['runners']} runners, {b['pods']} pods, {b['rate']} "
            f"jobs/s for {b['duration_s']} s, pods' pub/sub connections killed "
            f"{len(b['kills'])}x ({b['connections_killed']} connections)",
            "",
            f"Submitted {b['submitted']}, delivered {b['delivered']}, **lost {b['lost']}**, "
            f"duplicates {b['duplicates']}. Latency of undisturbed jobs p50 "
            f"{_fmt(_get(b, 'baseline_latency_ms', 'p50'))} ms; jobs submitted within 2 s "
            f"after a kill: p50 {_fmt(_get(b, 'disturbed_latency_ms', 'p50'))} ms, max "
            f"{_fmt(_get(b, 'disturbed_latency_ms', 'max'))} ms; **extra delay max "
            f"{_fmt(b['extra_delay_max_ms'])} ms** ({b['delayed_over_100ms']} jobs delayed "
            "by more than 100 ms).",
            "",
        ]
    out.append(AUTO_END)
    return "\n".join(out)


def write_summary(path: Path, data: dict[str, Any]) -> None:
    """Replace the generated block of ``path``, keeping everything around it."""
    block = render_summary(data)
    if path.exists():
        text = path.read_text()
        if AUTO_START in text and AUTO_END in text:
            head, rest = text.split(AUTO_START, 1)
            _old, tail = rest.split(AUTO_END, 1)
            path.write_text(head + block + tail)
            return
    path.write_text("# Benchmark summary\n\n" + block + "\n" + NOTES_HEADER)


# -- chart --------------------------------------------------------------------------------------


def write_chart(path: Path, data: dict[str, Any]) -> None:
    plt = deps.pyplot()
    s = data["scenarios"]
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    fig.suptitle(
        f"dispatcher benchmark {data['run_id']} ({data['environment']['cpu_count']} "
        f"CPUs, commit {data['environment']['git_commit'][:10]})"
    )
    _latency_panel(axes[0][0], s.get("latency"))
    _throughput_panel(axes[0][1], s.get("throughput"))
    _idle_panel(axes[0][2], s.get("idle"))
    _connections_panel(axes[1][0], s.get("connections"))
    _lostbell_panel(axes[1][1], s.get("lostbell"))
    _targets_panel(axes[1][2], data["targets"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _empty(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _latency_panel(ax: Any, lat: dict[str, Any] | None) -> None:
    title = "1. latency: submit → job frame (CDF)"
    if not lat:
        return _empty(ax, title)
    for mode in ("pubsub", "poll"):
        samples = _get(lat, mode, "samples_ms")
        if samples:
            n = len(samples)
            ax.plot(samples, [(k + 1) / n for k in range(n)], label=f"{mode} (n={n})")
    ax.set_xscale("log")
    ax.set_xlabel("ms (log)")
    ax.set_ylabel("fraction of jobs")
    ax.axvline(1.0, color="grey", linestyle=":", label="target p50 1 ms")
    ax.axvline(5.0, color="grey", linestyle="--", label="target p99 5 ms")
    ax.legend(fontsize=8)
    ax.set_title(title)


def _throughput_panel(ax: Any, t: dict[str, Any] | None) -> None:
    title = "2. throughput (per second)"
    if not t or len(t.get("series", [])) < 2:
        return _empty(ax, title)
    series = t["series"]
    for name in ("dispatched", "completed", "processed"):
        xs, ys = [], []
        for a, b in itertools.pairwise(series):
            dt = b["t"] - a["t"]
            if dt > 0:
                xs.append(b["t"])
                ys.append((b[name] - a[name]) / dt)
        ax.plot(xs, ys, label=f"{name}/s" + (" (= acked)" if name == "completed" else ""))
    ax.axhline(2000, color="grey", linestyle="--", label="target acked 2,000/s")
    ax.axhline(1000, color="grey", linestyle=":", label="target processed 1,000/s")
    ax.set_xlabel("s")
    ax.set_ylabel("jobs/s")
    twin = ax.twinx()
    twin.plot(
        [r["t"] for r in series],
        [r["results_queue"] for r in series],
        color="black",
        alpha=0.3,
        label="results queue",
    )
    twin.set_ylabel("results queue backlog")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title)


def _idle_panel(ax: Any, idle: dict[str, Any] | None) -> None:
    title = "3. idle cost"
    if not idle:
        return _empty(ax, title)
    modes = [m for m in ("pubsub", "poll") if isinstance(idle.get(m), dict)]
    labels = ["Redis cmd/s", "FCALL/s", "pod CPU %"]
    width = 0.35
    for k, mode in enumerate(modes):
        m = idle[mode]
        values = [
            m["redis"]["commands_per_s"],
            m["redis"]["fcall_per_s"],
            m["pod_cpu_percent_total"],
        ]
        xs = [x + k * width for x in range(len(labels))]
        bars = ax.bar(xs, [max(v, 0.01) for v in values], width, label=mode)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                _fmt(v),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xticks([x + width / 2 for x in range(len(labels))], labels)
    ax.set_yscale("log")
    ax.axhline(5, color="grey", linestyle="--", label="target 5 cmd/s")
    ax.legend(fontsize=8)
    ax.set_title(title)


def _connections_panel(ax: Any, c: dict[str, Any] | None) -> None:
    title = "4. connections: pod RSS while runners connect"
    if not c or not c.get("series"):
        return _empty(ax, title)
    ax.plot([r["t"] for r in c["series"]], [r["rss_mib"] for r in c["series"]], label="pod RSS")
    ax.set_xlabel("s since the first connect")
    ax.set_ylabel("MiB")
    twin = ax.twinx()
    at = c.get("connected_at") or []
    if at:
        step = c["connected"] / len(at)
        twin.plot(
            at, [(k + 1) * step for k in range(len(at))], color="tab:orange", label="connected"
        )
    twin.set_ylabel("runners connected")
    ax.set_title(
        f"{title}\n{_fmt(c['rss_per_connection_kib'])} KiB/conn, "
        f"{_fmt(c['connections_opened_per_s'])} conn/s"
    )


def _lostbell_panel(ax: Any, b: dict[str, Any] | None) -> None:
    title = "5. lost doorbell: latency by submit time"
    if not b or not b.get("points"):
        return _empty(ax, title)
    ax.scatter([p[0] for p in b["points"]], [max(p[1], 0.01) for p in b["points"]], s=4)
    for k in b["kills"]:
        ax.axvline(k["t"], color="red", alpha=0.5)
    ax.set_yscale("log")
    ax.set_xlabel("s (red: pub/sub connections killed)")
    ax.set_ylabel("ms (log)")
    ax.set_title(f"{title}\nlost {b['lost']}, extra delay max {_fmt(b['extra_delay_max_ms'])} ms")


def _targets_panel(ax: Any, rows: list[Row]) -> None:
    ax.set_axis_off()
    ax.set_title("targets")
    lines = [
        f"{'OK ' if r['met'] else ('-- ' if r['met'] is None else 'NO ')}"
        f"{r['scenario']}: {r['figure']} = {_fmt(r['value'])} {r['unit']} "
        f"(target {r['target']})"
        for r in rows
    ]
    ax.text(
        0.0,
        1.0,
        "\n".join(lines),
        va="top",
        ha="left",
        family="monospace",
        fontsize=8,
        transform=ax.transAxes,
    )
