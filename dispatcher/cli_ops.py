"""`dispatcher dashboard` and `dispatcher metrics-exporter`: operators' read-only views of a
namespace, served from Redis state (no pod needed)."""

from __future__ import annotations

import argparse
import logging

import uvicorn
from starlette.applications import Starlette

from dispatcher import preflight
from dispatcher.cli_common import SubParsers, epilog
from dispatcher.settings import Settings

DASHBOARD_PORT = 8090
EXPORTER_PORT = 9108


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    dash = subparsers.add_parser(
        "dashboard",
        parents=[common],
        help="serve a live, read-only web page of the namespace",
        description="Serve a live page of the namespace read from Redis only: queues per spec, "
        "pods, runners, jobs in flight and recent, results backlog, the event stream's tail. "
        "The server pushes changes to the page as they happen (Server-Sent Events); it never "
        "writes.",
        epilog=epilog(
            "  dispatcher dashboard                      http://127.0.0.1:8090/\n"
            "  dispatcher dashboard --host 0.0.0.0 --port 8090",
            environment="  DISPATCHER_REDIS_URL, DISPATCHER_NAMESPACE\n"
            "  DISPATCHER_DASHBOARD_TOKEN  when set, required as ?token= or a Bearer header",
        ),
    )
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    dash.add_argument("--port", type=int, default=DASHBOARD_PORT, help=f"({DASHBOARD_PORT})")
    dash.set_defaults(handler=dashboard)

    exporter = subparsers.add_parser(
        "metrics-exporter",
        parents=[common],
        help="serve the namespace's Prometheus metrics (run one per namespace)",
        description="Serve the namespace-wide figures read from Redis (pending jobs and oldest "
        "age per spec, runners by state, pods, leases, results outbox, sink boxes, rq queues, "
        "job counters) on /metrics. Run one per namespace: every pod would export the same "
        "figures, and sums over pods would count them once per pod. Pods export their own "
        "figures on DISPATCHER_ADMIN_PORT.",
        epilog=epilog("  dispatcher metrics-exporter --host 0.0.0.0 --port 9108"),
    )
    exporter.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    exporter.add_argument("--port", type=int, default=EXPORTER_PORT, help=f"({EXPORTER_PORT})")
    exporter.set_defaults(handler=metrics_exporter)


def _run(app: Starlette, host: str, port: int) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0


def dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from dispatcher.dashboard import dashboard_app

    preflight.require_redis(settings.redis_url)
    print(f"dashboard of namespace {settings.namespace!r} on http://{args.host}:{args.port}/")
    return _run(dashboard_app(settings), args.host, args.port)


def metrics_exporter(args: argparse.Namespace, settings: Settings) -> int:
    from dispatcher.exporter import exporter_app

    print(f"metrics of namespace {settings.namespace!r} on http://{args.host}:{args.port}/metrics")
    return _run(exporter_app(settings), args.host, args.port)
