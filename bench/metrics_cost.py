"""The pod's CPU cost of its metrics at a job rate (issue 10: < 5 % at 1,000 jobs/s).

    .venv/bin/python -m bench.metrics_cost [--rate 1000] [--connections 1000] [--scrape-every 15]

Times, in this process, exactly the code a pod runs for its metrics: per job the recording calls
(``delivered`` + ``sent`` on the `job` frame, ``started`` on `running`, one ``pumped`` per batch
of 256), and per scrape ``generate_latest`` of the pod's registry with ``--connections`` sockets
(``pod_view`` walks them). CPU share = (per-job cost x rate + scrape cost / interval) of one core.
No Redis, no network: the figure is the metrics' own cost, free of the noise of a whole-system
A/B on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest

from dispatcher.pod.session import State
from dispatcher.podmetrics import PodMetrics
from dispatcher.results import PumpResult

BATCH = 256


class _Sock:
    """A stand-in for a RunnerSocket (weak-referenceable, as the real one is)."""


def fake_pod(metrics: PodMetrics, connections: int) -> Any:
    states = list(State)
    sockets = {
        f"r{i}": SimpleNamespace(session=SimpleNamespace(state=states[i % len(states)]))
        for i in range(connections)
    }
    return SimpleNamespace(
        id="bench",
        sockets=sockets,
        doorbell=SimpleNamespace(probe_seen=time.monotonic(), live=True),
        settings=SimpleNamespace(wake="pubsub"),
        metrics=metrics,
        stopping=False,
    )


def per_job_seconds(jobs: int) -> float:
    metrics = PodMetrics()
    socks = [_Sock() for _ in range(1000)]
    created = str(int(time.time() * 1000))
    pumped = PumpResult(results=BATCH, sinks=0, batches=1, more=False)
    started = time.process_time()
    for i in range(jobs):
        sock: Any = socks[i % len(socks)]
        metrics.delivered(created)
        metrics.sent(sock, "job", 1, False)
        metrics.started(sock, "job", 1)
        if i % BATCH == 0:
            metrics.pumped(pumped)
    return (time.process_time() - started) / jobs


def scrape_seconds(connections: int, scrapes: int) -> float:
    metrics = PodMetrics()
    metrics.watch(fake_pod(metrics, connections))
    times = []
    for _ in range(scrapes):
        started = time.process_time()
        generate_latest(metrics.registry)
        times.append(time.process_time() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="jobs/s (1000)")
    parser.add_argument("--connections", type=int, default=1000, help="sockets per pod (1000)")
    parser.add_argument("--scrape-every", type=float, default=15.0, help="s between scrapes (15)")
    parser.add_argument("--jobs", type=int, default=200_000, help="jobs timed (200000)")
    args = parser.parse_args()
    job = min(per_job_seconds(args.jobs) for _ in range(3))
    scrape = scrape_seconds(args.connections, 50)
    recording = job * args.rate
    scraping = scrape / args.scrape_every
    print(f"recording per job: {job * 1e6:.1f} us CPU")
    print(f"scrape with {args.connections} sockets: {scrape * 1e3:.2f} ms CPU")
    print(
        f"at {args.rate:.0f} jobs/s, a scrape every {args.scrape_every:g} s: "
        f"{(recording + scraping) * 100:.2f} % of one core "
        f"(recording {recording * 100:.2f} %, scrapes {scraping * 100:.3f} %)"
    )


if __name__ == "__main__":
    main()
