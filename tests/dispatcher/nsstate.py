"""Everything a namespace holds in Redis, for before/after comparisons around hostile input."""

from __future__ import annotations

from typing import Any

from dispatcher.keys import Keys


def snapshot(rclient: Any, namespace: str) -> dict[str, object]:
    """Every key of ``namespace`` with its value; the pods' presence deadlines (rewritten by
    every tick of a live pod) are reduced to the set of pods."""
    pods = Keys(namespace).pods
    state: dict[str, object] = {}
    for key in sorted(rclient.scan_iter(match=f"{namespace}:*", count=1000)):
        kind = rclient.type(key)
        if key == pods:
            state[key] = sorted(rclient.zrange(key, 0, -1))
        elif kind == "string":
            state[key] = rclient.get(key)
        elif kind == "hash":
            state[key] = rclient.hgetall(key)
        elif kind == "set":
            state[key] = sorted(rclient.smembers(key))
        elif kind == "zset":
            state[key] = rclient.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            state[key] = rclient.lrange(key, 0, -1)
        elif kind == "stream":
            state[key] = rclient.xrange(key)
        else:
            state[key] = kind
    return state
