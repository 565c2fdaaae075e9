"""What one pod knows about itself, as Prometheus metrics (served on its admin port).

Only figures this process alone can know are here: its sockets and what they are doing, its
doorbell, the deliveries and reaps it made, the handshakes it refused, its Redis errors. Summed over
pods they give the fleet's totals. Figures read from Redis (queues, runners by state, the results
backlog) are the same for every pod and are exported once, by ``dispatcher metrics-exporter``
(``dispatcher.fleetmetrics``): exporting them from every pod would multiply them in any ``sum()``.

``PodMetrics`` is owned by the pod; the pod calls its small recording methods. The gauges are
computed at scrape time from a plain snapshot (``pod_view``) by a pure function (``pod_families``).
"""

from __future__ import annotations

import time
import weakref
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dispatcher.pod.session import State

if TYPE_CHECKING:
    from dispatcher.pod import Pod
    from dispatcher.pod.sockets import RunnerSocket
    from dispatcher.results import PumpResult

# job created (Redis clock) -> `job` frame written (pod clock): ms to minutes
DISPATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300)
REFUSAL_REASONS = {401: "unauthorized", 429: "rate_limited", 503: "unavailable"}


def pod_view(pod: Pod) -> dict[str, Any]:
    """A plain snapshot of the pod's in-memory state (no I/O; O(connections))."""
    states = Tally(sock.session.state.value for sock in list(pod.sockets.values()))
    seen = pod.doorbell.probe_seen
    now = time.monotonic()
    gate = pod.metrics.gate
    return {
        "pod": pod.id,
        "connections": len(pod.sockets),
        "sockets": {state.value: states.get(state.value, 0) for state in State},
        "doorbell_live": pod.settings.wake == "poll" or pod.doorbell.live,
        "probe_age": (now - seen) if seen else None,
        "stopping": pod.stopping,
        "guard_refusals": getattr(gate, "refusals", 0),
    }


def pod_families(view: dict[str, Any]) -> list[Metric]:
    """The gauges of one pod snapshot (pure)."""
    connections = GaugeMetricFamily(
        "dispatcher_connections", "Runner WebSockets open on this pod", value=view["connections"]
    )
    sockets = GaugeMetricFamily(
        "dispatcher_sockets", "This pod's runner sockets by session state", labels=["state"]
    )
    for state, count in sorted(view["sockets"].items()):
        sockets.add_metric([state], count)
    live = GaugeMetricFamily(
        "dispatcher_doorbell_live",
        "1 while this pod's doorbell subscription is live (or the pod polls)",
        value=1 if view["doorbell_live"] else 0,
    )
    probe_age = GaugeMetricFamily(
        "dispatcher_doorbell_probe_age_seconds",
        "Seconds since this pod's last doorbell probe came back (absent until the first)",
    )
    if view["probe_age"] is not None:
        probe_age.add_metric([], view["probe_age"])
    families: list[Metric] = [connections, sockets, live, probe_age]
    families.append(
        GaugeMetricFamily(
            "dispatcher_draining",
            "1 once this pod refuses new channels",
            value=int(view["stopping"]),
        )
    )
    guard = CounterMetricFamily(
        "dispatcher_guard_refusals",
        "Connections the HTTP guard refused before the handshake (400/408/414/431/503)",
        value=view["guard_refusals"],
    )
    families.append(guard)
    return families


class _ViewCollector(Collector):
    def __init__(self, view: Callable[[], dict[str, Any]]) -> None:
        self._view = view

    def collect(self) -> Iterable[Metric]:
        return pod_families(self._view())


class PodMetrics:
    """The pod's counters and histograms, in a registry of its own (tests run several pods in one
    process; the global registry would mix them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.gate: Any = None  # the HTTP guard's HandshakeGate, set by the server
        r = self.registry
        self.deliveries = Counter(
            "dispatcher_deliveries", "`job` frames this pod sent to runners", registry=r
        )
        self.dispatch_latency = Histogram(
            "dispatcher_dispatch_latency_seconds",
            "Job created (Redis clock) to `job` frame sent (pod clock); counts each attempt",
            buckets=DISPATCH_BUCKETS,
            registry=r,
        )
        self.lease_expiries = Counter(
            "dispatcher_lease_expiries",
            "Jobs this pod's tick reaped (start deadline, lease or timeout) by outcome",
            ["outcome"],
            registry=r,
        )
        self.tick_inbox = Counter(
            "dispatcher_tick_inbox_runners",
            "Runners the reconcile tick found in the inbox (a lost or still travelling doorbell)",
            registry=r,
        )
        self.presence_lost = Counter(
            "dispatcher_presence_lost",
            "Ticks that found this pod's presence lapsed (its channels were closed with 1001)",
            registry=r,
        )
        self.probe_failures = Counter(
            "dispatcher_doorbell_probe_failures",
            "Doorbell probes that never came back (the subscription was rebuilt)",
            registry=r,
        )
        self.redis_errors = Counter(
            "dispatcher_redis_errors", "Redis errors this pod's loops caught", ["where"], registry=r
        )
        self.refusals = Counter(
            "dispatcher_handshakes_refused",
            "Runner handshakes this pod answered with a refusal, by reason",
            ["reason"],
            registry=r,
        )
        self.start_latency = Histogram(
            "dispatcher_start_latency_seconds",
            "`job` frame sent to the runner's `running` accepted (pod clock, this pod's sends)",
            buckets=DISPATCH_BUCKETS,
            registry=r,
        )
        self.fenced = Counter(
            "dispatcher_fenced_messages",
            "Runner messages a fenced function refused (message; reason: stale, duplicate, "
            "unknown, or the cancel reason pushed back for running/heartbeat)",
            ["message", "reason"],
            registry=r,
        )
        self.recoveries = Counter(
            "dispatcher_doorbell_recoveries",
            "`job` frames sent by the reconcile tick's inbox re-read rather than a doorbell "
            "(a bell lost, or still travelling when the tick looked)",
            registry=r,
        )
        self.pumps = Counter(
            "dispatcher_pump_runs",
            "Results pump calls that enqueued at least one batch",
            registry=r,
        )
        self.pump_batches = Counter(
            "dispatcher_pump_batches", "rq batches this pod's results pump enqueued", registry=r
        )
        self.pump_entries = Counter(
            "dispatcher_pump_entries",
            "Outbox (box=results) and sink box (box=sinks) entries this pod's pump enqueued",
            ["box"],
            registry=r,
        )
        for box in ("results", "sinks"):
            self.pump_entries.labels(box)
        # the `job` frame each socket has in flight -> when it was sent (for start latency)
        self._sent: weakref.WeakKeyDictionary[RunnerSocket, tuple[str, int, float]] = (
            weakref.WeakKeyDictionary()
        )
        for reason in REFUSAL_REASONS.values():
            self.refusals.labels(reason)
        for outcome in ("requeued", "failed", "timeout"):  # the reaper's outcomes
            self.lease_expiries.labels(outcome)
        self.redis_errors.labels("tick")

    def watch(self, pod: Pod) -> None:
        """Export the pod's gauges (its sockets, doorbell) at scrape time."""
        self.registry.register(_ViewCollector(lambda: pod_view(pod)))

    # -- recording (called by the pod) ---------------------------------------------------------

    def delivered(self, created_ms: Any) -> None:
        self.deliveries.inc()
        try:
            latency = time.time() - int(created_ms) / 1000
        except (TypeError, ValueError):
            return
        self.dispatch_latency.observe(max(latency, 0.0))

    def sent(self, sock: RunnerSocket, job: str, attempt: int, recovery: bool) -> None:
        """A `job` frame went out on ``sock`` (``recovery``: sent by the tick's inbox re-read)."""
        self._sent[sock] = (job, attempt, time.monotonic())
        if recovery:
            self.recoveries.inc()

    def started(self, sock: RunnerSocket, job: str, attempt: int) -> None:
        """The runner's `running` for the job this pod sent it was accepted."""
        sent = self._sent.pop(sock, None)
        if sent is not None and sent[:2] == (job, attempt):
            self.start_latency.observe(max(time.monotonic() - sent[2], 0.0))

    def fenced_reply(self, message: str, reason: Any) -> None:
        self.fenced.labels(message, str(reason)).inc()

    def pumped(self, result: PumpResult) -> None:
        if result.batches:
            self.pumps.inc()
            self.pump_batches.inc(result.batches)
        self.pump_entries.labels("results").inc(result.results)
        self.pump_entries.labels("sinks").inc(result.sinks)

    def ticked(self, reply: dict[str, Any]) -> None:
        for _job, outcome, _attempt in reply.get("reaped") or []:
            self.lease_expiries.labels(str(outcome)).inc()
        inbox = reply.get("inbox") or []
        if inbox:
            self.tick_inbox.inc(len(inbox))

    def refused(self, status: int) -> None:
        self.refusals.labels(REFUSAL_REASONS.get(status, str(status))).inc()
