"""Targets, the SUMMARY.md block and the chart of the results scenario (issue 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import deps
from bench.report import Row, _fmt, _ge, _get, _le, _mark, _row
from bench.resultspath import rates

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"
NOTES_HEADER = "## Notes kept across runs"


def evaluate(r: dict[str, Any]) -> list[Row]:
    """The issue's five measures of the results path, against their targets."""
    rows: list[Row] = []
    p = r.get("phases", {})
    load = p.get("load")
    if isinstance(load, dict):
        ratio = load.get("processed_over_acknowledged")
        backlog_s = load.get("backlog_at_end_s_of_work")
        acked = load.get("acknowledged_per_s")
        rows += [
            _row(
                "results",
                "processed ÷ acknowledged (load)",
                ratio,
                "",
                "≥ 0.95",
                _ge(ratio, 0.95),
                f"processed {load.get('processed_per_s')}/s",
            ),
            _row(
                "results",
                "backlog at the end of the load",
                backlog_s,
                "s of work",
                "< 1 s",
                bool(backlog_s < 1.0) if isinstance(backlog_s, int | float) else None,
                f"{load.get('backlog_at_end')} results (outbox {load.get('outbox_at_end')}, "
                f"rq queue {load.get('rq_queue_at_end')} batches)",
            ),
            _row(
                "results",
                "acknowledged (load)",
                acked,
                "jobs/s",
                "≥ 1,500 jobs/s",
                _ge(acked, 1500),
                f"{load.get('runners')} runners, {load.get('pods')} pods, "
                f"{load.get('writers')} writers",
            ),
        ]
    for name, target in (("drain", 5000.0), ("postgres", 2000.0)):
        d = p.get(name)
        if not isinstance(d, dict):
            continue
        label = "drain rate" + (" with the postgres sink" if name == "postgres" else "")
        if "skipped" in d:
            rows.append(_row("results", label, None, "", f"≥ {target:,.0f}/s", None, d["skipped"]))
            continue
        value = d["written_per_s"] if name == "postgres" else d["processed_per_s"]
        note = f"{d['results']:,} waiting, {d['writers']} writers started"
        if name == "postgres":
            note += f"; Redis side {d['processed_per_s']}/s; {d['rows_written']:,} rows"
        rows.append(
            _row(
                "results",
                label,
                value,
                "results/s",
                f"≥ {target:,.0f} results/s",
                _ge(value, target) if d.get("done") else False,
                note,
            )
        )
    k = p.get("kill")
    if isinstance(k, dict):
        # from the moment the writer was frozen to be killed (conservative), else from the restart
        v = k.get("all_processed_after_stop_s", k.get("all_processed_after_restart_s"))
        rows.append(
            _row(
                "results",
                "kill -9 a writer mid-batch: all processed after a writer runs again",
                v,
                "s",
                "≤ 15 s",
                _le(v, 15.0) if k.get("done") else False,
                f"killed batch {k.get('killed_batch_entries')} entries "
                f"({k.get('killed_batch_unrecorded_at_kill')} not yet recorded), processed "
                f"{k.get('killed_batch_processed_after_restart_s')} s after the restart; counted "
                f"from the writer's last moment of work (SIGSTOP, killed "
                f"{k.get('stopped_to_restart_s')} s later and replaced at once)",
            )
        )
    return rows


def render(data: dict[str, Any]) -> str:
    """The results block of SUMMARY.md (between its own markers)."""
    env = data["environment"]
    r = data["scenarios"]["results"]
    rows = [row for row in data["targets"] if row["scenario"] == "results"]
    out = [
        START,
        "",
        "## 6. Results path (issue 8) — latest run",
        "",
        f"Run `{data['run_id']}` on {data['started_iso']}: {env['cpu_count']} CPUs, "
        f"Python {env['python']}, {env['redis_server']} {env['redis_version']}, commit "
        f"`{env['git_commit'][:12]}`{' (uncommitted changes)' if env['git_dirty'] else ''}, "
        f"wall time {data['wall_time_s']:.0f} s. Command: `{data['command']}`. Files: "
        f"`{data['files']['json']}`, `{data['files']['png']}`.",
        "",
        "| figure | measured | target | verdict | note |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        out.append(
            f"| {row['figure']} | {_fmt(row['value'])} {row['unit']} | {row['target']} | "
            f"{_mark(row['met'])} | {row['note']} |"
        )
    load = _get(r, "phases", "load")
    if isinstance(load, dict):
        out += [
            "",
            f"Load: {load['runners']} runners finishing at once on {load['pods']} pods, "
            f"{load['writers']} writers, {load['duration_s']:.0f} s: submitted "
            f"{_fmt(load['submitted_per_s'])}/s, acknowledged {_fmt(load['acknowledged_per_s'])}/s,"
            f" processed {_fmt(load['processed_per_s'])}/s; caught up "
            f"{_fmt(load['caught_up_after_end_s'])} s after the window; duplicates "
            f"{load['duplicates']}. CPU % (100 = one core; 'others': whatever else ran on this "
            "machine): "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in load["cpu_percent"].items())
            + ".",
        ]
    for name in ("drain", "postgres"):
        d = _get(r, "phases", name)
        if isinstance(d, dict) and "skipped" not in d:
            out += [
                "",
                f"{'Drain' if name == 'drain' else 'Drain with the postgres sink'}: "
                f"{d['results']:,} results in {_fmt(d['processed_s'])} s from starting "
                f"{d['writers']} writers (first result after {_fmt(d['first_processed_after_s'])}"
                " s)"
                + (
                    f", {d['rows_written']:,} rows in PostgreSQL after {_fmt(d['written_s'])} s"
                    if name == "postgres"
                    else ""
                )
                + "; CPU % until done ('others': whatever else ran on this machine): "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in d["cpu_percent"].items())
                + ".",
            ]
    for phase, error in r.get("errors", {}).items():
        out += ["", f"Phase {phase} FAILED: {error}"]
    out += ["", END]
    return "\n".join(out)


def write_summary(path: Path, data: dict[str, Any]) -> None:
    """Replace the results block of ``path`` (or add it before the notes), keeping the rest."""
    block = render(data)
    text = path.read_text() if path.exists() else "# Benchmark summary\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _old, tail = rest.split(END, 1)
        text = head + block + tail
    elif NOTES_HEADER in text:
        head, tail = text.split(NOTES_HEADER, 1)
        text = head + block + "\n\n" + NOTES_HEADER + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


# -- chart --------------------------------------------------------------------------------------


def write_chart(path: Path, data: dict[str, Any]) -> None:
    plt = deps.pyplot()
    r = data["scenarios"]["results"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    fig.suptitle(
        f"results path {data['run_id']} ({data['environment']['cpu_count']} CPUs, commit "
        f"{data['environment']['git_commit'][:10]})"
    )
    _load_panel(axes[0][0], _get(r, "phases", "load"))
    _drain_panel(axes[0][1], r.get("phases", {}))
    _kill_panel(axes[1][0], _get(r, "phases", "kill"))
    _targets_panel(axes[1][1], [row for row in data["targets"] if row["scenario"] == "results"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _empty(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _load_panel(ax: Any, load: dict[str, Any] | None) -> None:
    title = "load: acknowledged/s, processed/s and results backlog"
    if not load or len(load.get("series", [])) < 2:
        return _empty(ax, title)
    series = load["series"]
    acked = load.get("acked_per_second") or []
    ax.plot([a[0] for a in acked], [a[1] for a in acked], label="acknowledged/s (runners' acks)")
    xs, ys = rates(series, "processed")
    ax.plot(xs, ys, label="processed/s")
    ax.axhline(1500, color="grey", linestyle="--", label="target acknowledged 1,500/s")
    ax.axvline(load["duration_s"], color="red", alpha=0.4, label="end of the load window")
    ax.set_xlabel("s")
    ax.set_ylabel("jobs/s")
    twin = ax.twinx()
    ts = [row["t"] for row in series]
    twin.plot(
        ts,
        [row["completed"] - row["processed"] for row in series],
        color="black",
        alpha=0.5,
        label="backlog: acknowledged, not processed",
    )
    twin.plot(ts, [row["outbox"] for row in series], color="tab:purple", alpha=0.5, label="outbox")
    twin.plot(
        ts,
        [row["rq_queue"] for row in series],
        color="tab:brown",
        alpha=0.5,
        linestyle=":",
        label="rq results queue (batches)",
    )
    twin.set_ylabel("results (backlog, outbox) / batches (rq queue)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center right")
    ax.set_title(
        f"{title}\nprocessed ÷ acknowledged {_fmt(load['processed_over_acknowledged'])}, "
        f"acknowledged {_fmt(load['acknowledged_per_s'])}/s"
    )


def _drain_panel(ax: Any, phases: dict[str, Any]) -> None:
    title = "drain: results left to process after the writers start"
    drawn = False
    for name, color in (("drain", "tab:blue"), ("postgres", "tab:green")):
        d = phases.get(name)
        if not isinstance(d, dict) or not d.get("series"):
            continue
        drawn = True
        series = d["series"]
        ts = [row["t"] for row in series]
        label = "no sink" if name == "drain" else "postgres sink"
        ax.plot(
            ts,
            [d["results"] - row["processed"] for row in series],
            color=color,
            label=f"{label}: not yet processed",
        )
        if name == "postgres":
            ax.plot(
                ts,
                [row.get("sinkbox", 0) for row in series],
                color=color,
                linestyle="--",
                label="postgres sink: not yet written",
            )
        ax.plot(
            ts, [row["outbox"] for row in series], color=color, alpha=0.4, linestyle=":",
            label=f"{label}: outbox",
        )  # fmt: skip
    if not drawn:
        return _empty(ax, title)
    ax.set_xlabel("s since the writers were started")
    ax.set_ylabel("results")
    ax.legend(fontsize=8)
    d = phases.get("drain") or {}
    pg = phases.get("postgres") or {}
    ax.set_title(
        f"{title}\nno sink {_fmt(d.get('processed_per_s'))}/s, postgres "
        f"{_fmt(pg.get('written_per_s'))}/s"
    )


def _kill_panel(ax: Any, k: dict[str, Any] | None) -> None:
    title = "kill -9 a writer mid-batch"
    if not k or not k.get("series"):
        return _empty(ax, title)
    series = k["series"]
    ts = [row["t"] for row in series]
    ax.plot(
        ts,
        [row["completed"] - row["processed"] for row in series],
        label="backlog: seeded, not yet processed",
    )
    ax.plot(ts, [row["outbox"] for row in series], alpha=0.5, label="outbox")
    ax.axvline(k["killed_after_s"], color="red", label="writer killed (SIGKILL)")
    ax.axvline(k["restart_s"], color="green", linestyle="--", label="new writer started")
    ax.set_xlabel("s since the first writer listened (results seeded from then on)")
    ax.set_ylabel("results")
    ax.legend(fontsize=8)
    ax.set_title(
        f"{title}\nall processed {_fmt(k['all_processed_after_restart_s'])} s after the restart, "
        f"{_fmt(k.get('all_processed_after_stop_s'))} s after the writer stopped"
    )


def _targets_panel(ax: Any, rows: list[Row]) -> None:
    ax.set_axis_off()
    ax.set_title("targets")
    lines = [
        f"{'OK ' if row['met'] else ('-- ' if row['met'] is None else 'NO ')}"
        f"{row['figure']} = {_fmt(row['value'])} {row['unit']} (target {row['target']})"
        for row in rows
    ]
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=8,
            transform=ax.transAxes)  # fmt: skip
