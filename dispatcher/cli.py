"""`dispatcher`: the operator and producer command line.

Subcommands live in small modules, each with a ``register(subparsers, common)`` function listed in
``COMMANDS``; a handler receives the parsed arguments and the settings and returns the exit status.
Errors (unknown job, refused input, Redis unreachable, bad JSON) become one line on stderr and exit
status 1; argparse's usage errors stay 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

import redis

from dispatcher import (
    __version__,
    cli_groups,
    cli_human,
    cli_jobs,
    cli_logs,
    cli_ops,
    cli_runners,
    cli_usage,
    preflight,
    up,
)
from dispatcher.cli_common import Parser, SubParsers, epilog
from dispatcher.errors import DispatchError
from dispatcher.settings import Settings

Register = Callable[[SubParsers, argparse.ArgumentParser], None]


def register_serve(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "serve",
        parents=[common],
        help="run one dispatcher pod",
        description="Run one dispatcher pod: runners connect to it over WebSocket; run as many "
        "as you like behind a load balancer.",
        epilog=epilog(
            "  dispatcher serve\n  dispatcher serve --host 0.0.0.0 --port 8000",
            environment="  every DISPATCHER_* setting: the table in README.md (Settings)",
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    parser.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="serve /metrics on this port (default: $DISPATCHER_ADMIN_PORT; 0 = off)",
    )
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.admin_port is not None:
        settings = dataclasses.replace(settings, admin_port=args.admin_port)
    preflight.require_redis(settings.redis_url)  # one line, not the app's start-up traceback
    # imported here so producer commands start without the server's dependencies
    server = importlib.import_module("dispatcher.server")
    result = server.serve(settings, args.host, args.port)
    return result if isinstance(result, int) else 0


# ---------------------------------------------------------------------------------------------
# SUBCOMMAND REGISTRY: one entry per module; `dispatcher up` (the lead's) is added here.
# ---------------------------------------------------------------------------------------------
COMMANDS: tuple[Register, ...] = (
    register_serve,
    cli_jobs.register,
    cli_runners.register,
    up.register,
    cli_ops.register,  # dashboard, metrics-exporter (operators' read-only views)
    cli_human.register,  # top, events (terminal views; `status` tables live there too)
    cli_logs.register,  # logs (a job's live output)
    cli_usage.register,  # usage (runner-seconds and jobs per day)
    cli_groups.register,  # group set/list (concurrency groups)
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dispatcher",
        description="Redis job dispatcher for self-hosted CI runners.",
        epilog=epilog(
            "  dispatcher up --demo                     everything on this machine, sample jobs\n"
            "  dispatcher submit --spec local --wait -- echo hello\n"
            "  dispatcher jobs --status failed\n"
            "  dispatcher COMMAND --help                 that command's options and examples",
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, default=None)
    # the same options after the subcommand; SUPPRESS keeps them from resetting earlier values
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, default=argparse.SUPPRESS)
    # (the subcommands' parsers are Parsers too: one-line usage errors, examples as written)
    subparsers = cast(
        SubParsers, parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    )
    for register in COMMANDS:
        register(subparsers, common)
    return parser


def _global_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--redis-url",
        default=default,
        help="Redis URL (default: $DISPATCHER_REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--namespace",
        default=default,
        help="key namespace (default: $DISPATCHER_NAMESPACE or dispatch)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(redis_url=args.redis_url, namespace=args.namespace)
        status: int = args.handler(args, settings)
        return status
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = error_message(exc)
        if message is None:
            raise
        print(f"dispatcher: {message}", file=sys.stderr)
        return 1


def error_message(exc: Exception) -> str | None:
    """The one-line message of an expected error, or None for a bug (re-raised)."""
    if isinstance(exc, KeyError):  # NotFound, and KeyError from the clients
        return str(exc.args[0]) if exc.args else "not found"
    if isinstance(exc, redis.ConnectionError):
        return f"cannot reach Redis: {exc}"
    if isinstance(exc, redis.RedisError):
        return f"Redis error: {exc}"
    if isinstance(exc, DispatchError | ValueError | TimeoutError):
        return str(exc) or type(exc).__name__
    return None


if __name__ == "__main__":
    sys.exit(main())
