"""Concurrency groups: names, limits and the `group list` view (the replaced system's
per-organisation limits).

A job may name a group; at most the group's limit of its jobs are claimed or running at once,
across every pod. The Redis Functions (``lua/dispatch.lua``, "concurrency groups") enforce it;
this module checks input in Python first (one ``ValueError`` naming the argument), sets limits and
reads the per-group counts. A group with no limit of its own uses ``DISPATCHER_GROUP_DEFAULT_LIMIT``
(published by the pods in the namespace's config hash), else it is unlimited.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

from dispatcher import functions
from dispatcher.keys import Keys
from dispatcher.records import text

GROUP_RE = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")
MAX_LIMIT = 1_000_000


def check_group(group: Any) -> str:
    """A group name: 1-128 letters, digits and ``. _ @ + -`` (the rule of runner names)."""
    if not isinstance(group, str):
        raise TypeError(f"group must be a string, not {type(group).__name__}")
    if not GROUP_RE.match(group):
        raise ValueError(
            f"invalid group {group!r}: 1-128 characters of letters, digits and . _ @ + -"
        )
    return group


def check_limit(limit: Any) -> int | None:
    """A group limit: an integer from 0 (hold every job) to MAX_LIMIT, or None (no own limit)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an integer or None, not {type(limit).__name__}")
    if not 0 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be from 0 to {MAX_LIMIT}, not {limit}")
    return limit


def set_limit_call(keys: Keys, group: str, limit: int | None) -> functions.Call[dict[str, Any]]:
    """The checked `group_set` call (raises ValueError/TypeError on bad input)."""
    return functions.group_set(keys, check_group(group), check_limit(limit))


# -- the `group list` view: two round trips, whatever the number of groups ---------------------


def _first_reads(pipe: Any, keys: Keys, names: Sequence[str]) -> None:
    pipe.hget(keys.config, "group_default_limit")
    for name in names:
        pipe.hget(keys.group(name), "limit")
        pipe.scard(keys.group_inflight(name))
        pipe.smembers(keys.group_specs(name))


def _parse_first(
    replies: list[Any], names: Sequence[str]
) -> tuple[int | None, list[tuple[str, int | None, int, list[str]]]]:
    default = int(replies[0]) if replies[0] not in (None, "", b"") else None
    rows = []
    for i, name in enumerate(names):
        own, inflight, specs = replies[1 + 3 * i : 4 + 3 * i]
        limit = int(own) if own is not None else (default if default else None)
        rows.append((name, limit, int(inflight), sorted(text(s) for s in specs)))
    return default, rows


def _rows(
    rows: list[tuple[str, int | None, int, list[str]]], counts: list[Any]
) -> list[dict[str, Any]]:
    out, at = [], 0
    for name, limit, inflight, specs in rows:
        pending = {spec: int(counts[at + i]) for i, spec in enumerate(specs)}
        at += len(specs)
        out.append(
            {
                "group": name,
                "limit": limit,
                "inflight": inflight,
                "pending": sum(pending.values()),
                "pending_by_spec": pending,
            }
        )
    return out


def list_groups(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every group: limit (None = unlimited), in-flight and pending counts, sorted by name."""
    names = sorted(text(n) for n in client.smembers(keys.groups))
    pipe = client.pipeline(transaction=False)
    _first_reads(pipe, keys, names)
    _, rows = _parse_first(pipe.execute(), names)
    pipe = client.pipeline(transaction=False)
    for name, _limit, _inflight, specs in rows:
        for spec in specs:
            pipe.zcard(keys.group_pending(name, spec))
    return _rows(rows, pipe.execute())


async def list_groups_async(client: redis.asyncio.Redis, keys: Keys) -> list[dict[str, Any]]:
    """``list_groups`` on an asyncio client."""
    names = sorted(text(n) for n in await client.smembers(keys.groups))
    async with client.pipeline(transaction=False) as pipe:
        _first_reads(pipe, keys, names)
        _, rows = _parse_first(await pipe.execute(), names)
    async with client.pipeline(transaction=False) as pipe:
        for name, _limit, _inflight, specs in rows:
            for spec in specs:
                pipe.zcard(keys.group_pending(name, spec))
        return _rows(rows, await pipe.execute())
