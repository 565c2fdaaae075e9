"""`worker-bridge`: an rq worker on the results queue of one namespace."""

from __future__ import annotations

import argparse
import logging
import sys
import uuid

import redis
from rq import SimpleWorker

from dispatcher.errors import ConfigError
from dispatcher.keys import Keys
from dispatcher.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker-bridge",
        description="Record terminal job results from the namespace's rq results queue.",
    )
    parser.add_argument(
        "--burst", action="store_true", help="process what is queued, then exit (rq's burst mode)"
    )
    parser.add_argument("--redis-url", help="Redis URL (default: $DISPATCHER_REDIS_URL)")
    parser.add_argument("--namespace", help="key namespace (default: $DISPATCHER_NAMESPACE)")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default INFO",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(redis_url=args.redis_url, namespace=args.namespace)
        return run(settings, burst=args.burst, log_level=args.log_level)
    except (ConfigError, redis.RedisError) as exc:
        print(f"worker-bridge: {exc}", file=sys.stderr)
        return 1


def run(settings: Settings, *, burst: bool = False, log_level: str = "INFO") -> int:
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    keys = Keys(settings.namespace)
    connection = redis.Redis.from_url(settings.redis_url)
    connection.ping()  # fail fast, with one line, when Redis is unreachable
    # SimpleWorker runs each task in this process. The default Worker forks a work horse per
    # job (~5 ms each); the task is a few Redis round trips of our own code, so isolation buys
    # nothing. Even so rq's own per-job bookkeeping costs ~2.7 ms CPU per result (see
    # bench/results/SUMMARY.md): ~100-250 results/s per worker on a busy 2-core machine. Scale
    # out by running more workers; a batch consumer would be the next step.
    worker = SimpleWorker(
        [keys.results_queue],
        connection=connection,
        name=f"{settings.namespace}-bridge-{uuid.uuid4().hex[:12]}",
    )
    # the scheduler moves results whose task failed back to the queue after their Retry delay
    worker.work(burst=burst, with_scheduler=True, logging_level=log_level)
    return 0
