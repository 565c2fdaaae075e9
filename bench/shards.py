"""Which primary of a Redis Cluster holds which namespace (pure: no I/O).

``CLUSTER NODES`` text is parsed into nodes and their slot ranges; namespaces, given with the
slot ``CLUSTER KEYSLOT`` reported for them, are grouped by the primary that serves that slot, so
the capacity scenario can place several namespaces on one shard or one on each shard.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SLOTS = 16384


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    host: str
    port: int
    primary: bool
    slots: tuple[tuple[int, int], ...]  # inclusive ranges served

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def serves(self, slot: int) -> bool:
        return any(low <= slot <= high for low, high in self.slots)


def _slot_range(item: str) -> tuple[int, int] | None:
    if item.startswith("["):  # a slot being imported or migrated: not served here yet
        return None
    low, _, high = item.partition("-")
    return int(low), int(high or low)


def parse_nodes(text: str) -> list[Node]:
    """Every node of a ``CLUSTER NODES`` reply (``<id> <ip:port@bus[,host]> <flags> <primary>
    <ping> <pong> <epoch> <link> <slot>...``); a line that does not parse raises ValueError."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 8:
            raise ValueError(f"not a CLUSTER NODES line: {line!r}")
        address = fields[1].split("@", 1)[0]
        host, _, port = address.rpartition(":")
        flags = set(fields[2].split(","))
        ranges = tuple(r for r in (_slot_range(s) for s in fields[8:]) if r is not None)
        nodes.append(Node(fields[0], host, int(port), "master" in flags, ranges))
    return nodes


def owner(nodes: Iterable[Node], slot: int) -> Node | None:
    """The primary serving ``slot`` (None when no primary does)."""
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot {slot} is not in 0..{SLOTS - 1}")
    return next((n for n in nodes if n.primary and n.serves(slot)), None)


def by_primary(named_slots: Iterable[tuple[str, int]], nodes: list[Node]) -> dict[str, list[str]]:
    """Names grouped by the address of the primary serving their slot, in the order given."""
    out: dict[str, list[str]] = {n.addr: [] for n in nodes if n.primary}
    for name, slot in named_slots:
        node = owner(nodes, slot)
        if node is None:
            raise ValueError(f"no primary serves slot {slot} (of {name!r})")
        out[node.addr].append(name)
    return out


def one_per_shard(groups: dict[str, list[str]], count: int) -> list[str] | None:
    """``count`` names, each on a different primary (None when too few primaries have one)."""
    firsts = [names[0] for names in groups.values() if names]
    return firsts[:count] if len(firsts) >= count else None


def same_shard(groups: dict[str, list[str]], count: int) -> list[str] | None:
    """``count`` names all on one primary (None when no primary has that many)."""
    return next((names[:count] for names in groups.values() if len(names) >= count), None)
