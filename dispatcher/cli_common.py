"""What every `dispatcher` subcommand module shares: types, the JSON printer, connections."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TypeAlias

import redis

from dispatcher.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False))


def connect(settings: Settings) -> redis.Redis:
    """A sync connection for one CLI command (closed by the caller)."""
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        client_name=f"dispatcher-cli:{settings.namespace}",
    )


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
