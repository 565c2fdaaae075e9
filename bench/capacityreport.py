"""Targets and the Markdown tables of one capacity run (pure: from its JSON-ready dict)."""

from __future__ import annotations

import math
from typing import Any

LATENCY_TARGET = 1.10  # cluster p50 at most 10 % above standalone's, same run


def _get(data: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _runs_once(phases: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(where, lost, duplicates) of every measured run."""
    out: list[tuple[str, int, int]] = []
    lat = phases.get("latency")
    if isinstance(lat, dict):
        for r in lat.get("rounds_detail", []):
            out.append((f"latency {r['label']}", r["lost"], r["duplicates"]))
    for name in ("throughput", "shards"):
        block = phases.get(name)
        if isinstance(block, dict):
            for r in block.get("runs", []):
                where = r.get("placement") or f"{r['backend']} {r['pods']} pods"
                out.append((f"{name} {where}", r["lost"], r["duplicates"]))
    pods = phases.get("pods")
    if isinstance(pods, dict):
        out.append(("pods", pods["lost"], pods["duplicates"]))
    return out


def evaluate(phases: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's target (cluster p50 within 10 % of standalone) and exactly-once per run."""
    rows: list[dict[str, Any]] = []
    ratio = _get(phases, "latency", "ratio_cluster_over_standalone", "p50")
    if "latency" in phases:
        rows.append(
            {
                "figure": "dispatch p50, cluster ÷ standalone",
                "value": ratio,
                "target": f"≤ {LATENCY_TARGET:.2f}",
                "met": None if ratio is None else ratio <= LATENCY_TARGET,
            }
        )
    for where, lost, dup in _runs_once(phases):
        rows.append(
            {
                "figure": f"lost / duplicated ({where})",
                "value": f"{lost} / {dup}",
                "target": "0 / 0",
                "met": lost == 0 and dup == 0,
            }
        )
    return rows


def _latency_table(lat: dict[str, Any]) -> list[str]:
    lines = [
        f"### Dispatch latency, standalone vs cluster ({lat['pods']} pods, {lat['runners']} "
        f"idle runners, {_fmt(lat['rate'], 0)} jobs/s for {_fmt(lat['duration_s'], 0)} s, "
        f"{lat['rounds']} alternating round(s) each)",
        "",
        "| backend | p50 ms | p90 ms | p99 ms | max ms | submit call p50 ms | p50 per round ms "
        "| lost / dup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("standalone", "cluster"):
        b = lat[name]
        q = b["latency_ms"]
        rounds = ", ".join(_fmt(v, 2) for v in b["p50_per_round_ms"])
        lines.append(
            f"| {name} | {_fmt(q.get('p50'), 2)} | {_fmt(q.get('p90'), 2)} | "
            f"{_fmt(q.get('p99'), 2)} | {_fmt(q.get('max'), 2)} | "
            f"{_fmt(b['submit_call_ms'].get('p50'), 3)} | {rounds} | "
            f"{b['lost']} / {b['duplicates']} |"
        )
    r = lat["ratio_cluster_over_standalone"]
    lines += [
        "",
        f"Cluster ÷ standalone: p50 **{_fmt(r.get('p50'), 2)}**, p90 {_fmt(r.get('p90'), 2)}, "
        f"p99 {_fmt(r.get('p99'), 2)}; the submit call alone "
        f"{_fmt(lat.get('ratio_submit_call_p50'), 2)}.",
    ]
    return lines


def _per_core(ms: Any) -> str:
    return _fmt(1000.0 / ms, 0) if isinstance(ms, int | float) and ms > 0 else "-"


def _throughput_table(block: dict[str, Any]) -> list[str]:
    lines = [
        "### Most jobs/s of one namespace (one shard)",
        "",
        "| backend | pods | runners | acknowledged jobs/s | busiest Redis CPU % | Redis ms / job "
        "| ≈ jobs/s per Redis core | pods CPU % | machine CPU % | lost / dup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in block["runs"]:
        lines.append(
            f"| {r['backend']} | {r['pods']} | {r['runners']} | "
            f"**{_fmt(r['acknowledged_per_s'])}** | {_fmt(r['redis_cpu_percent_busiest'])} | "
            f"{_fmt(r['redis_ms_per_job_busiest'], 3)} | "
            f"{_per_core(r['redis_ms_per_job_busiest'])} | {_fmt(r['pod_cpu_percent_total'])} | "
            f"{_fmt(r['cpu_percent'].get('machine'))} | {r['lost']} / {r['duplicates']} |"
        )
    return lines


def _shards_table(block: dict[str, Any]) -> list[str]:
    lines = [
        "### One shard vs three: several namespaces at once, one pod each",
        "",
        "| placement | namespaces | primaries used | aggregate acknowledged jobs/s | per namespace "
        "| Redis CPU % per primary | machine CPU % | lost / dup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in block["runs"]:
        per_ns = ", ".join(_fmt(n["acknowledged_per_s"], 0) for n in r["namespaces"])
        redis = ", ".join(_fmt(v) for v in r["redis_cpu_percent_by_port"].values())
        lines.append(
            f"| {r['placement']} | {r['namespaces_count']} | {r['shards_used']} | "
            f"**{_fmt(r['acknowledged_per_s'])}** | {per_ns} | {redis} | "
            f"{_fmt(r['cpu_percent'].get('machine'))} | {r['lost']} / {r['duplicates']} |"
        )
    lines += [
        "",
        "Aggregate, one per shard ÷ one shard: "
        f"{_fmt(block.get('ratio_spread_over_one_shard'), 2)}.",
    ]
    return lines


def _pods_table(block: dict[str, Any]) -> list[str]:
    lines = [
        f"### Runners per pod (one pod, {block['backend']}; dispatch at "
        f"{_fmt(block['rate'], 0)} jobs/s for {_fmt(block['duration_s'], 0)} s at each count)",
        "",
        "| idle runners | WebSockets held | pod's Redis connections | pod RSS MiB | KiB per runner "
        "| dispatch p50 ms | dispatch p99 ms | pod CPU % while dispatching |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lv in block["levels"]:
        q = lv["latency_ms"]
        lines.append(
            f"| {_fmt(lv['runners'])} | {_fmt(lv['pod_websockets'])} | "
            f"{lv['pod_redis_connections']} | {_fmt(lv['pod_rss_idle_mib'])} | "
            f"{_fmt(lv['pod_rss_per_runner_kib'])} | {_fmt(q.get('p50'), 2)} | "
            f"{_fmt(q.get('p99'), 2)} | {_fmt(lv['pod_cpu_percent'])} |"
        )
    lines += [
        "",
        f"Empty pod: {_fmt(block['pod_rss_empty_mib'])} MiB. Every job of every count delivered "
        f"once: lost {block['lost']}, duplicated {block['duplicates']}.",
    ]
    return lines


def render(data: dict[str, Any]) -> str:
    env = data.get("environment", {})
    phases = data.get("phases", {})
    lines = [
        "# Capacity: Redis Cluster vs standalone, pods and shards",
        "",
        f"Run `{data['run_id']}` ({data.get('started_iso', '')}), `{data['command']}`, commit "
        f"`{str(env.get('git_commit', ''))[:10]}`{' (dirty)' if env.get('git_dirty') else ''}; "
        f"{env.get('cpu_count')} CPUs ({env.get('cpu_model', '')}), Redis "
        f"{env.get('redis_version')}, Python {env.get('python')}. Load average at start "
        f"{data.get('loadavg_at_start')}, at end {data.get('loadavg_at_end')}. Everything "
        "(pods, writers, simulated runners, producers and every Redis server) shares this "
        "machine's cores.",
        "",
    ]
    if "latency" in phases:
        lines += [*_latency_table(phases["latency"]), ""]
    if "throughput" in phases:
        lines += [*_throughput_table(phases["throughput"]), ""]
    if "shards" in phases:
        lines += [*_shards_table(phases["shards"]), ""]
    if "pods" in phases:
        lines += [*_pods_table(phases["pods"]), ""]
    lines += ["### Targets", "", "| figure | value | target | met |", "|---|---|---|---|"]
    for row in data.get("targets", []):
        verdict = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        lines.append(f"| {row['figure']} | {_fmt(row['value'], 3)} | {row['target']} | {verdict} |")
    for label, error in data.get("errors", {}).items():
        lines.append(f"\nFAILED {label}: {error}")
    return "\n".join(lines) + "\n"
