"""Namespace-wide figures read from Redis, as Prometheus metrics (``dispatcher metrics-exporter``).

Two pure halves, no I/O here:

- ``fleet_plan``: the reads, as a generator that yields batches of commands and receives their
  replies (run by ``dispatcher.exporter`` with one pipeline per batch, at most four round trips).
  Every command is O(1) or O(log N) except the per-spec, per-pod and per-sink ones, so a scrape
  costs O(specs + pods + sinks) commands whatever the number of jobs and runners
  (``tests/dispatcher/test_fleetmetrics.py`` counts them).
- ``fleet_families``: the snapshot dict the plan returns -> metric families.

What the keys do not hold cheaply is approximated, and said so in the help text:

- runners by state: ``busy`` = jobs holding a lease (one runner each), ``idle`` = connections on
  live pods minus busy, ``offline`` = the rest of the registered runners. Exact per-runner states
  would cost one read per runner;
- oldest pending age: the older of the heads of the highest- and the lowest-priority band (the
  queue is ordered by priority, then age; bands in between are not looked at);
- results lag: age (since ``finished``) of the outbox entry with the lowest score.

Exported by one exporter, not by every pod: the figures are the same from every process, so a
``sum()`` over pods would multiply them (docs/operations.md#metrics).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dispatcher.keys import Keys
from dispatcher.records import text
from dispatcher.usage_metrics import usage_families, usage_totals

Command = tuple[str | int | float, ...]
Plan = Generator[list[Command], list[Any], dict[str, Any]]

# rq's own key names (rq.registry templates), kept here to avoid importing rq in the exporter's
# scrape path; tests/dispatcher/test_fleetmetrics.py pins them to rq's.
RQ_SCHEDULED = "rq:scheduled:{}"
RQ_FAILED = "rq:failed:{}"


def _job_id(member: Any) -> str:
    """The job id in a pending member ``{seq:016d}:{id}``."""
    return str(text(member)).split(":", 1)[1]


def _entry_job(member: Any) -> str:
    """The job id in an outbox entry ``{id}:{attempt}``."""
    return str(text(member)).rsplit(":", 1)[0]


def _int(value: Any) -> int | None:
    return None if value is None or value == b"" or value == "" else int(value)


def fleet_plan(keys: Keys) -> Plan:
    """The reads of one snapshot; returns the snapshot dict (see ``fleet_families``)."""
    results_queue = keys.results_queue
    (
        clock,
        specs_raw,
        pods_raw,
        runners,
        leases,
        stats,
        outbox,
        sinks_raw,
        queued,
        scheduled,
        failed,
        outbox_head,
        usage_total,
    ) = yield [
        ("TIME",),
        ("SMEMBERS", keys.specs),
        ("ZRANGE", keys.pods, 0, -1, "WITHSCORES"),  # pod -> presence deadline (ms)
        ("SCARD", keys.runners),
        ("ZCARD", keys.leases),
        ("HGETALL", keys.stats),
        ("ZCARD", keys.outbox),
        ("SMEMBERS", keys.sinks),
        ("LLEN", keys.rq_queue(results_queue)),
        ("ZCARD", RQ_SCHEDULED.format(results_queue)),
        ("ZCARD", RQ_FAILED.format(results_queue)),
        ("ZRANGE", keys.outbox, 0, 0),
        ("HGETALL", keys.usage_total),
    ]
    now = int(clock[0]) * 1000 + int(clock[1]) // 1000
    specs = sorted(map(text, specs_raw))
    pod_deadlines = {text(p): float(s) for p, s in _pairs(pods_raw)}
    pods = sorted(p for p, deadline in pod_deadlines.items() if deadline > now)
    sinks = sorted(map(text, sinks_raw))
    head_job = _entry_job(outbox_head[0]) if outbox_head else None

    batch: list[Command] = [
        ("ZCOUNT", keys.leases, "-inf", now),
        ("ZCOUNT", keys.outbox, "-inf", now),
        ("HGET", keys.job(head_job), "finished") if head_job else ("ECHO", ""),
    ]
    for spec in specs:
        batch += [
            ("ZCARD", keys.pending(spec)),
            ("ZCARD", keys.idle(spec)),
            ("ZRANGE", keys.pending(spec), 0, 0),
            ("ZRANGE", keys.pending(spec), -1, -1, "WITHSCORES"),
        ]
    for pod in pods:
        batch.append(("SCARD", keys.pod_runners(pod)))
    for sink in sinks:
        batch += [
            ("ZCARD", keys.sinkbox(sink)),
            ("ZCOUNT", keys.sinkbox(sink), "-inf", now),
            ("ZCOUNT", keys.sinkbox(sink), "+inf", "+inf"),
            ("LLEN", keys.rq_queue(keys.sink_queue(sink))),
        ]
    replies = iter((yield batch))
    overdue, outbox_due, head_finished = next(replies), next(replies), next(replies)
    spec_rows: dict[str, dict[str, Any]] = {}
    for spec in specs:
        pending, idle, top, bottom = (next(replies) for _ in range(4))
        bottom_pairs = _pairs(bottom)
        spec_rows[spec] = {
            "pending": int(pending),
            "idle_runners": int(idle),
            "top": _job_id(top[0]) if top else None,
            "bottom_score": bottom_pairs[0][1] if bottom_pairs else None,
        }
    pod_runners = {pod: int(next(replies)) for pod in pods}
    fields = ("box", "due", "parked", "queued")
    sink_rows = {sink: {f: int(next(replies)) for f in fields} for sink in sinks}

    # the oldest job of the lowest-priority band (the one a busy queue starves first)
    with_pending = [s for s in specs if spec_rows[s]["top"]]
    replies = iter(
        (
            yield [
                *[
                    (
                        "ZRANGEBYSCORE",
                        keys.pending(s),
                        spec_rows[s]["bottom_score"],
                        spec_rows[s]["bottom_score"],
                        "LIMIT",
                        0,
                        1,
                    )
                    for s in with_pending
                ],
                *[("HGET", keys.job(spec_rows[s]["top"]), "created") for s in with_pending],
            ]
        )
    )
    bottoms = {s: next(replies) for s in with_pending}
    tops = {s: _int(next(replies)) for s in with_pending}
    bottom_ids = {s: _job_id(m[0]) for s, m in bottoms.items() if m}
    replies = iter((yield [("HGET", keys.job(j), "created") for j in bottom_ids.values()]))
    bottom_created = {s: _int(next(replies)) for s in bottom_ids}
    for spec in specs:
        created = [c for c in (tops.get(spec), bottom_created.get(spec)) if c is not None]
        row = spec_rows[spec]
        row["oldest_age"] = max(0.0, (now - min(created)) / 1000) if created else 0.0
        del row["top"], row["bottom_score"]

    finished = _int(head_finished) if head_job else None
    return {
        "namespace": keys.namespace,
        "now_ms": now,
        "specs": spec_rows,
        "pods": pod_runners,
        "runners_registered": int(runners),
        "leases": int(leases),
        "leases_overdue": int(overdue),
        "counters": {text(k): int(v) for k, v in sorted(dict(stats).items())},
        "results": {
            "queue": results_queue,
            "outbox": int(outbox),
            "outbox_due": int(outbox_due),
            "queued": int(queued),
            "retrying": int(scheduled),
            "failed": int(failed),
            "lag_seconds": max(0.0, (now - finished) / 1000) if finished else 0.0,
        },
        "sinks": sink_rows,
        "usage": usage_totals(usage_total),
    }


def _pairs(reply: Any) -> list[tuple[Any, float]]:
    """A WITHSCORES reply as (member, score) pairs, whether the client paired them or not."""
    if not reply:
        return []
    if isinstance(reply[0], list | tuple):
        return [(m, float(s)) for m, s in reply]
    return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]


def runner_states(snapshot: dict[str, Any]) -> dict[str, int]:
    """Runners by state, from counts only (see the module's note)."""
    connected = sum(snapshot["pods"].values())
    busy = snapshot["leases"]
    idle = max(0, connected - busy)
    offline = max(0, snapshot["runners_registered"] - idle - busy)
    return {"idle": idle, "busy": busy, "offline": offline}


ALL_SPECS = "*"  # the spec label of the fleet-wide dispatcher_runners rows


def runner_rows(snapshot: dict[str, Any]) -> dict[tuple[str, str], int]:
    """``dispatcher_runners{spec,state}``: fleet-wide by state, plus idle per spec."""
    rows = {(ALL_SPECS, state): n for state, n in runner_states(snapshot).items()}
    for spec, row in snapshot["specs"].items():
        rows[(spec, "idle")] = row["idle_runners"]
    return rows


def _gauge(name: str, doc: str, labels: list[str], rows: dict[Any, Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in rows.items():
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


def fleet_families(snap: dict[str, Any]) -> list[Metric]:
    """The metric families of one snapshot (pure)."""
    specs, results, sinks = snap["specs"], snap["results"], snap["sinks"]
    jobs = CounterMetricFamily(
        "dispatcher_jobs",
        "Jobs by outcome since the namespace began ({ns}:stats)",
        labels=["outcome"],
    )
    for outcome, value in snap["counters"].items():
        jobs.add_metric([outcome], value)
    queues = {results["queue"]: results["queued"]}
    queues.update({f"{snap['namespace']}:sink:{s}": row["queued"] for s, row in sinks.items()})
    one = GaugeMetricFamily
    return [
        _gauge(
            "dispatcher_jobs_pending",
            "Jobs waiting for a runner",
            ["spec"],
            {s: r["pending"] for s, r in specs.items()},
        ),
        _gauge(
            "dispatcher_jobs_pending_oldest_age_seconds",
            "Age of the oldest pending job (heads of the highest and lowest priority band)",
            ["spec"],
            {s: r["oldest_age"] for s, r in specs.items()},
        ),
        _gauge(
            "dispatcher_spec_idle_runners",
            "Runners in a long poll for the spec",
            ["spec"],
            {s: r["idle_runners"] for s, r in specs.items()},
        ),
        _gauge(
            "dispatcher_runners",
            'Runners by state: spec="*" all registered runners (busy = leases; idle = connected'
            " - busy; offline = the rest); per spec only idle (in a long poll for it; busy and"
            " offline per spec would cost a read per runner)",
            ["spec", "state"],
            runner_rows(snap),
        ),
        one(
            "dispatcher_runners_registered", "Registered runners", value=snap["runners_registered"]
        ),
        one("dispatcher_pods_live", "Pods whose presence has not expired", value=len(snap["pods"])),
        _gauge(
            "dispatcher_pod_runners",
            "Runners whose connection is on the pod (Redis view)",
            ["pod"],
            snap["pods"],
        ),
        one("dispatcher_leases", "Jobs claimed or running", value=snap["leases"]),
        one(
            "dispatcher_leases_overdue",
            "Leases past their deadline, not reaped yet",
            value=snap["leases_overdue"],
        ),
        jobs,
        one(
            "dispatcher_results_backlog",
            "Outcomes not yet recorded by a writer (outbox)",
            value=results["outbox"],
        ),
        one(
            "dispatcher_results_due",
            "Outbox entries waiting for a pump (should be ~0)",
            value=results["outbox_due"],
        ),
        one(
            "dispatcher_results_lag_seconds",
            "Age since finished of the outbox entry due first (0: empty outbox)",
            value=results["lag_seconds"],
        ),
        one(
            "dispatcher_results_retrying",
            "Result batches waiting for an rq retry",
            value=results["retrying"],
        ),
        one(
            "dispatcher_results_failed",
            "Result batches in rq's failed registry",
            value=results["failed"],
        ),
        _gauge("dispatcher_rq_queue_length", "rq batches waiting for a writer", ["queue"], queues),
        _gauge(
            "dispatcher_sinkbox_entries",
            "Final outcomes a sink has not written",
            ["sink"],
            {s: r["box"] for s, r in sinks.items()},
        ),
        _gauge(
            "dispatcher_sinkbox_due",
            "Sink box entries waiting for a pump",
            ["sink"],
            {s: r["due"] for s, r in sinks.items()},
        ),
        _gauge(
            "dispatcher_sinkbox_parked",
            "Sink entries parked after their last try failed",
            ["sink"],
            {s: r["parked"] for s, r in sinks.items()},
        ),
        *usage_families(snap.get("usage", {})),
    ]
