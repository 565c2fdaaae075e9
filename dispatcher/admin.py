"""Runner registry for operators (CLI and tests): add, list, rotate, revoke runners. Synchronous."""

from __future__ import annotations

from typing import Any

import redis

from dispatcher import functions
from dispatcher.keys import Keys
from dispatcher.records import runner_record, text
from dispatcher.tokens import new_token, token_hash


def add_runner(
    client: redis.Redis, keys: Keys, name: str, specs: list[str], *, ephemeral: bool = False
) -> str:
    """Register runner ``name`` serving ``specs``; return its token (Redis keeps only the hash).

    ``ephemeral``: the registration ends with the runner's first attempt (one-shot runners).
    Raises ``InvalidInput`` for a bad name or spec, or a name that exists already.
    """
    if not isinstance(name, str) or not all(isinstance(spec, str) for spec in specs):
        raise TypeError("runner name and specs must be strings")
    token = new_token()
    call = functions.runner_add(keys, name, token_hash(token), list(specs), ephemeral=ephemeral)
    functions.run_sync(client, call)
    return token


def list_runners(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every registered runner's record, sorted by name."""
    names = sorted(text(name) for name in client.smembers(keys.runners))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.runner(name))
    # a runner revoked between the two round trips leaves an empty hash: skip it
    return [runner_record(raw) for raw in pipe.execute() if raw]


def revoke_runner(client: redis.Redis, keys: Keys, name: str) -> None:
    """Revoke runner ``name`` (its token stops working; a live connection is closed with 4001).

    Raises ``NotFound`` (a ``KeyError``) when there is no such runner.
    """
    functions.run_sync(client, functions.runner_revoke(keys, name))


def rotate_runner(client: redis.Redis, keys: Keys, name: str) -> tuple[str, bool]:
    """Give runner ``name`` a new token at once; return it (shown once, Redis keeps its hash) and
    whether a live connection was told to close (with 4001). The old token is refused from now
    on; the runner's specs and a job in flight stay.

    Raises ``NotFound`` (a ``KeyError``) when there is no such runner.
    """
    token = new_token()
    closed = functions.run_sync(client, functions.runner_rotate(keys, name, token_hash(token)))
    return token, closed
