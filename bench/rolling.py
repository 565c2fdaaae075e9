"""Rolling restart of 3 pods behind HAProxy under load, measured (issue 13).

``python -m bench.rolling [--runners 300] [--redis-url URL] [--keep]``

The world of ``tests/scaleout/rolling.py`` at soak size: HAProxy (deploy/haproxy/haproxy.cfg
rendered for loopback ports), 3 ``dispatcher serve`` pods, 2 ``worker-bridge`` writers, 12 real
``dispatch-runner`` agents and the rest simulated runners (reconnecting, re-attaching), a producer
submitting 40 jobs/s per 300 runners of 0.2 to 8 s. Pod 1, 2, 3 get SIGTERM in turn and are
started again on their port; the next one waits until HAProxy has the last one UP and every
runner is connected again.

Prints, and writes to ``bench/results/rolling-<time>.json`` and ``.txt``: submitted, processed,
failed, lost, executed twice; submit -> execution start p50/p99/max before, during and after the
roll (simulated runners: the ``job`` frame's arrival; agents: their job's shell starting);
reconnect times (a 1001 close to the next accepted handshake, simulated runners); each restart's
timeline and HAProxy's view of it. Uses the Redis at ``--redis-url`` (default
``DISPATCHER_REDIS_URL`` or redis://127.0.0.1:6379/0) in a fresh namespace, deleted afterwards.
Exit status 1 when a job was lost, failed or executed twice.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import redis

from tests.scaleout.haproxykit import HAVE_HAPROXY
from tests.scaleout.rolling import Outcome, RollingWorld, RollSize
from tests.scaleout.rolltally import reconnect_seconds, unreturned

RESULTS = Path(__file__).resolve().parent / "results"


def report(outcome: Outcome, size: RollSize, command: str) -> str:
    t = outcome.tally
    sim = outcome.sim
    back = sim["reconnects"]
    codes: dict[int, int] = {}
    for _, code, _ in sim["closes"]:
        codes[code] = codes.get(code, 0) + 1
    lines = [
        f"rolling restart: {size.runners} runners ({size.agents} agents), 3 pods, 2 writers, "
        f"HAProxy; {size.rate:g} jobs/s of {', '.join(f'{s:g}' for s in size.job_seconds)} s",
        f"reproduce: {command}",
        f"jobs: submitted {t.submitted}, processed {t.processed}, failed {t.failed}, "
        f"lost {t.lost}, executed twice {t.doubled} ({t.executions} executions)",
        *(f"submit -> start, {phase}: {stats.line()}" for phase, stats in t.latency.items()),
        f"reconnect (1001 close -> accepted handshake, simulated runners): "
        f"{reconnect_seconds(back).line(1.0, 's')}",
        f"closes seen by simulated runners, by code: {codes}; failed handshakes: "
        f"{sim['connect_errors'] or 'none'}; not back: {len(unreturned(sim['closes'], back))}",
        f"roll: {outcome.roll[1] - outcome.roll[0]:.1f} s from the first SIGTERM until pod3 "
        f"was UP and every runner connected",
        *(r.summary() for r in outcome.restarts),
        *outcome.lb_lines(),
        f"HAProxy connections per pod at the end: {outcome.sessions_after}",
        *t.details[:20],
    ]
    return "\n".join(lines)


def cleanup(url: str, namespace: str) -> None:
    with redis.Redis.from_url(url) as client:
        names = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        names += list(client.scan_iter(match=f"rq:*{namespace}*", count=1000))
        if names:
            client.delete(*names)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rolling", description=__doc__)
    parser.add_argument("--runners", type=int, default=300)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("DISPATCHER_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's logs directory")
    args = parser.parse_args()
    if not HAVE_HAPROXY:
        sys.exit("bench.rolling: haproxy is not installed (apt-get install -y haproxy)")
    if args.runners < 10:
        sys.exit("bench.rolling: --runners must be at least 10")
    size = RollSize.named("soak", args.runners)
    command = f"python -m bench.rolling --runners {args.runners}"
    root = Path(tempfile.mkdtemp(prefix="rolling-"))
    world = RollingWorld(root, size, args.redis_url)
    try:
        world.start()
        outcome = world.run()
    finally:
        world.close()
        cleanup(args.redis_url, world.namespace)
    text = report(outcome, size, command)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / time.strftime("rolling-%Y%m%d-%H%M%S")
    stem.with_suffix(".txt").write_text(text + "\n")
    data = {
        "size": asdict(size),
        "tally": asdict(outcome.tally),
        "restarts": [asdict(r) for r in outcome.restarts],
        "roll": outcome.roll,
        "lb_changes": outcome.lb_changes,
        "lb_retries": outcome.lb_retries,
        "reconnect": asdict(reconnect_seconds(outcome.sim["reconnects"])),
    }
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"written: {stem}.txt, {stem}.json" + (f"; logs in {root}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if outcome.tally.problems() else 0)


if __name__ == "__main__":
    main()
