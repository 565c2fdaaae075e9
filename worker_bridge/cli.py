"""`worker-bridge`: an rq worker on the results queue (and the sink queues) of one namespace."""

from __future__ import annotations

import argparse
import logging
import sys
import uuid

import redis

from dispatcher import redisconn
from dispatcher.errors import ConfigError
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from worker_bridge.resilient import Worker, work_until_stopped
from worker_bridge.tasks import WriterContext, install_context

EPILOG = """\
environment:
  DISPATCHER_REDIS_URL, DISPATCHER_NAMESPACE   where the results queue lives
  DISPATCHER_JOB_RETENTION                     seconds final job records are kept (0 = forever)
  DISPATCHER_SINKS                             comma-separated: postgres, webhook (default none)
  DISPATCHER_POSTGRES_URL                      for the postgres sink (table dispatcher_jobs)
  DISPATCHER_WEBHOOK_URL, _SECRET, _TIMEOUT    for the webhook sink (HMAC-SHA256 signed POSTs)
  DISPATCHER_SINK_RETRY                        seconds between a sink batch's tries (1,5,30,120,300)

examples:
  worker-bridge                                   record results; run two or more for redundancy
  DISPATCHER_SINKS=postgres DISPATCHER_POSTGRES_URL=postgresql://ci@db/ci worker-bridge --init-db
  worker-bridge --burst                           process what is queued, then exit
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker-bridge",
        description="Record terminal job results from the namespace's rq results queue, and "
        "write them to the configured sinks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--burst", action="store_true", help="process what is queued, then exit (rq's burst mode)"
    )
    parser.add_argument(
        "--init-db",
        action="store_true",
        help="create the postgres sink's table (dispatcher_jobs) and exit",
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
        if args.init_db:
            return init_db(settings)
        return run(settings, burst=args.burst, log_level=args.log_level)
    except (ConfigError, redis.RedisError, ValueError) as exc:
        print(f"worker-bridge: {exc}", file=sys.stderr)
        return 1


def init_db(settings: Settings) -> int:
    from worker_bridge.sinks.postgres import PostgresSink

    if not settings.postgres_url:
        raise ConfigError("--init-db needs DISPATCHER_POSTGRES_URL")
    PostgresSink(settings.postgres_url).init_db()
    print("worker-bridge: table dispatcher_jobs is ready")
    return 0


def run(settings: Settings, *, burst: bool = False, log_level: str = "INFO") -> int:
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ctx = WriterContext.build(settings)
    for sink in ctx.sinks.values():
        sink.check()  # one line at start, not a traceback per task
    install_context(ctx)
    keys = Keys(settings.namespace)
    # rq's Redis: the namespace's, or the queues' own (DISPATCHER_RESULTS_REDIS_URL, where the
    # namespace's is a cluster; the tasks then reach the namespace through ctx.namespace_redis)
    connection = redisconn.sync_client(settings.rq_redis_url, socket_timeout=None)
    connection.ping()  # fail fast, with one line, when Redis is unreachable
    if ctx.namespace_redis is not None:
        ctx.namespace_redis.ping()
    # SimpleWorker runs each task in this process (a forked work horse costs ~5 ms per task).
    # Each task is a batch of up to DISPATCHER_RESULT_BATCH_SIZE results, so rq's own per-task
    # bookkeeping is paid once per batch. The results queue comes first: sinks never delay the
    # Redis side.
    queues = [keys.results_queue, *(keys.sink_queue(name) for name in ctx.sinks)]

    def make_worker() -> Worker:
        return Worker(
            queues,
            connection=connection,
            name=f"{settings.namespace.strip('{}')}-bridge-{uuid.uuid4().hex[:12]}",
        )

    try:
        # the scheduler re-queues batches whose task failed after their Retry delay; a worker
        # that quit on a Redis error (a failover) is replaced once Redis answers again
        work_until_stopped(
            make_worker,
            {"burst": burst, "with_scheduler": True, "logging_level": log_level},
            connection.ping,
        )
    finally:
        for sink in ctx.sinks.values():
            sink.close()
    return 0
