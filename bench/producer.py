"""Producer process: submits jobs through the project's own synchronous client.

``python -m bench.producer CONFIG.json`` (started by the harness). Prints ``{"event": "ready"}``
once connected, waits for ``go`` on stdin, then submits for ``duration`` seconds:

- ``rate``: an open loop at ``rate`` jobs/s on a fixed schedule (a late submit is not made up
  with a burst; the worst lateness is reported);
- ``max``: as fast as the system takes them — ``MAX_BATCH`` jobs per round trip
  (``Client.submit_many``) back to back, pausing while the spec's pending queue holds
  ``max_backlog`` jobs or more (0: never pause).

Every payload is ``{"t0": <time.time() just before the submit call>, "i": n}``. The job ids and
their ``t0`` go to the results file; ``{"event": "done"}`` follows.
"""

from __future__ import annotations

import sys
import time

import redis

from bench.common import ProducerConfig, ProducerResult, dump, load, say
from dispatcher import redisconn
from dispatcher.client import Client
from dispatcher.keys import Keys
from dispatcher.settings import Settings

JOB_TIMEOUT = 600
# ``max`` submits this many jobs per round trip (``Client.submit_many``), as a CI system
# submitting a pipeline's jobs would: one submit at a time bounds the rate by the round trip
# (~1 ms on a busy machine), not by the dispatcher
MAX_BATCH = 20


def produce(cfg: ProducerConfig, client: Client, probe: redis.Redis) -> ProducerResult:
    submitted: list[tuple[str, float]] = []
    calls: list[float] = []
    cpu0 = time.process_time()
    errors, first_error, max_lag = 0, "", 0.0
    pending_key = Keys(cfg.namespace).pending(cfg.spec)
    started = time.time()
    end = started + cfg.duration
    i = 0
    while True:
        if cfg.mode == "rate":
            if i >= int(cfg.rate * cfg.duration):
                break
            delay = started + i / cfg.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
        else:
            if time.time() >= end:
                break
            if cfg.max_backlog:  # before every batch: one ZCARD per MAX_BATCH jobs
                while time.time() < end and int(probe.zcard(pending_key)) >= cfg.max_backlog:
                    time.sleep(0.002)
        n = 1 if cfg.mode == "rate" else MAX_BATCH
        t0 = time.time()
        jobs = [
            {"spec": cfg.spec, "payload": {"t0": t0, "i": i + k}, "timeout": JOB_TIMEOUT}
            for k in range(n)
        ]
        try:
            if n == 1:
                ids = [client.submit(cfg.spec, jobs[0]["payload"], timeout=JOB_TIMEOUT)]
            else:
                ids = client.submit_many(jobs)
        except (redis.RedisError, ValueError) as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
        else:
            calls.append(time.time() - t0)
            submitted.extend((job_id, t0) for job_id in ids)
        i += n
    return ProducerResult(
        submitted=submitted,
        errors=errors,
        first_error=first_error,
        started=started,
        ended=time.time(),
        max_lag=max_lag,
        submit_call=calls,
        cpu_seconds=time.process_time() - cpu0,
    )


def main() -> None:
    cfg = load(sys.argv[1], ProducerConfig)
    settings = Settings(
        redis_url=cfg.redis_url, namespace=cfg.namespace, results_redis_url=cfg.results_redis_url
    )
    probe = redisconn.sync_client(cfg.redis_url)
    with Client(settings) as client:
        probe.ping()
        say("ready")
        line = sys.stdin.readline()
        if line.strip() == "go":
            dump(cfg.out, produce(cfg, client, probe))
    probe.close()
    say("done")


if __name__ == "__main__":
    main()
