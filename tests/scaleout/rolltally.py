"""How a rolling-restart run is counted: pure functions over what the run recorded.

Inputs: the jobs submitted (id, submit time ``t0``, seconds), their final records in Redis, and
every execution seen on the runner side (simulated runners: the ``job`` frame's arrival; agents:
the job's shell starting, from the ledger). Outputs one ``Tally``:

- processed: final status ``processed`` with exit code 0; failed: any other final status;
  lost: no final status after the settle time (or no record at all);
- doubled: jobs executed more than once, whatever the attempts (a re-attach that failed and let
  the lease lapse shows up here as a second execution);
- latency, per phase of the run by the job's submit time (before the first SIGTERM, during the
  roll, after the last pod is back and every runner reconnected): submit -> execution start.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

FINAL = frozenset({"processed", "failed", "canceled"})
PHASES = ("before", "during", "after")


@dataclass(frozen=True)
class Submitted:
    job: str
    t0: float
    seconds: float


@dataclass(frozen=True)
class Execution:
    job: str
    attempt: int
    who: str  # runner name
    started: float


@dataclass(frozen=True)
class Stats:
    count: int
    p50: float
    p99: float
    max: float

    def line(self, unit: float = 1000.0, suffix: str = "ms") -> str:
        if not self.count:
            return "n=0"
        return (
            f"n={self.count} p50={self.p50 * unit:.0f} {suffix} p99={self.p99 * unit:.0f} "
            f"{suffix} max={self.max * unit:.0f} {suffix}"
        )


@dataclass
class Tally:
    submitted: int = 0
    processed: int = 0
    failed: int = 0
    lost: int = 0
    doubled: int = 0
    executions: int = 0
    latency: dict[str, Stats] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        names = ("failed", "lost", "doubled")
        out = [f"{n} = {getattr(self, n)}" for n in names if getattr(self, n)]
        if self.submitted == 0:
            out.append("no job submitted")
        if self.processed != self.submitted:
            out.append(f"processed {self.processed} of {self.submitted}")
        return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def stats(values: list[float]) -> Stats:
    if not values:
        return Stats(0, 0.0, 0.0, 0.0)
    return Stats(len(values), percentile(values, 50), percentile(values, 99), max(values))


def phase_of(t0: float, roll_start: float, roll_end: float) -> str:
    if t0 < roll_start:
        return "before"
    return "during" if t0 < roll_end else "after"


def tally(
    submitted: list[Submitted],
    records: Mapping[str, Mapping[str, str]],
    executions: Iterable[Execution],
    roll: tuple[float, float],
) -> Tally:
    """Count the run; ``roll`` is (first SIGTERM, every pod back and every runner reconnected)."""
    out = Tally(submitted=len(submitted))
    for job in submitted:
        rec = records.get(job.job, {})
        status = rec.get("status")
        if status == "processed" and rec.get("exit_code") == "0":
            out.processed += 1
        elif status in FINAL:
            out.failed += 1
            out.details.append(f"{job.job}: {status}: {dict(rec)}")
        else:
            out.lost += 1
            out.details.append(f"{job.job}: not final: {dict(rec)}")
    by_job: dict[str, list[Execution]] = {}
    for execution in executions:
        by_job.setdefault(execution.job, []).append(execution)
    wanted = {job.job: job for job in submitted}
    latencies: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for job_id, runs in by_job.items():
        if job_id not in wanted:
            continue
        out.executions += len(runs)
        if len(runs) > 1:
            out.doubled += 1
            seen = ", ".join(f"{r.who} attempt {r.attempt} at {r.started:.3f}" for r in runs)
            out.details.append(f"{job_id}: executed {len(runs)} times: {seen}")
        job = wanted[job_id]
        first = min(r.started for r in runs)
        latencies[phase_of(job.t0, *roll)].append(first - job.t0)
    out.latency = {phase: stats(values) for phase, values in latencies.items()}
    return out


def reconnect_seconds(reconnects: Iterable[tuple[str, float, float]]) -> Stats:
    """Stats of (runner, lost, back) spans: from a close to the next accepted handshake."""
    return stats([back - lost for _, lost, back in reconnects])


def unreturned(
    closes: Iterable[tuple[str, int, float]], reconnects: Iterable[tuple[str, float, float]]
) -> list[str]:
    """Runners whose last close has no reconnect after it."""
    last_close: dict[str, float] = {}
    for who, _, at in closes:
        last_close[who] = max(at, last_close.get(who, at))
    last_back: dict[str, float] = {}
    for who, _, back in reconnects:
        last_back[who] = max(back, last_back.get(who, back))
    return sorted(w for w, at in last_close.items() if last_back.get(w, 0.0) < at)
