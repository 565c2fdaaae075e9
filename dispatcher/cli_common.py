"""What every `dispatcher` subcommand module shares: types, the JSON printer, connections."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, NoReturn, TypeAlias

import redis

from dispatcher import redisconn
from dispatcher.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False))


def connect(settings: Settings) -> redis.Redis:
    """A sync connection for one CLI command (closed by the caller)."""
    return redisconn.sync_client(
        settings.redis_url,
        decode_responses=True,
        client_name=f"dispatcher-cli:{settings.namespace}",
    )


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


# what every subcommand reads from the environment (flags --redis-url, --namespace override)
CONNECTION_ENV = """\
  DISPATCHER_REDIS_URL   Redis URL (default redis://127.0.0.1:6379/0; `dispatcher up` prints one)
  DISPATCHER_NAMESPACE   key namespace (default dispatch)"""


def epilog(examples: str, environment: str = CONNECTION_ENV, notes: str = "") -> str:
    """An argparse epilog: examples, then the environment variables read, then notes."""
    text = f"examples:\n{examples.rstrip()}\n\nenvironment:\n{environment.rstrip()}\n"
    return text + (f"\n{notes.rstrip()}\n" if notes else "")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``PROG: error: MESSAGE (see PROG --help)``, exit 2)
    and examples kept as written in ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
