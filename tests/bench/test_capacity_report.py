"""The pure parts of the capacity scenario: cluster placement and the report's targets."""

from __future__ import annotations

from typing import Any

import pytest

from bench import capacityreport, shards

NODES = """\
a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:30002@40002,host-b master - 0 1700000000000 2 connected 5461-10922 [5000-<-a1]
c3 127.0.0.1:30003@40003 master - 0 1700000000000 3 connected 10923-16383
d4 127.0.0.1:30004@40004 slave a1 0 1700000000000 1 connected
"""


def test_parse_nodes_reads_primaries_replicas_and_slot_ranges() -> None:
    nodes = shards.parse_nodes(NODES)
    assert [(n.id, n.port, n.primary) for n in nodes] == [
        ("a1", 30001, True),
        ("b2", 30002, True),
        ("c3", 30003, True),
        ("d4", 30004, False),
    ]
    assert nodes[1].slots == ((5461, 10922),)  # the importing slot is not served yet
    assert nodes[3].slots == ()


def test_owner_is_the_primary_serving_the_slot() -> None:
    nodes = shards.parse_nodes(NODES)
    assert [shards.owner(nodes, s).port for s in (0, 5460, 5461, 16383)] == [  # type: ignore[union-attr]
        30001,
        30001,
        30002,
        30003,
    ]
    for bad in (-1, 16384):
        with pytest.raises(ValueError, match=r"not in 0\.\.16383"):
            shards.owner(nodes, bad)


def test_a_slot_nobody_serves_is_an_error() -> None:
    nodes = shards.parse_nodes("a1 127.0.0.1:1@2 master - 0 0 1 connected 0-99\n")
    assert shards.owner(nodes, 100) is None
    with pytest.raises(ValueError, match="no primary serves slot 100"):
        shards.by_primary([("ns", 100)], nodes)


def test_garbage_is_not_a_node_list() -> None:
    with pytest.raises(ValueError, match="not a CLUSTER NODES line"):
        shards.parse_nodes("hello world\n")


def test_placements_one_per_shard_and_all_on_one() -> None:
    nodes = shards.parse_nodes(NODES)
    named = [("n1", 10), ("n2", 20), ("n3", 6000), ("n4", 30), ("n5", 12000)]
    groups = shards.by_primary(named, nodes)
    assert groups == {
        "127.0.0.1:30001": ["n1", "n2", "n4"],
        "127.0.0.1:30002": ["n3"],
        "127.0.0.1:30003": ["n5"],
    }
    assert shards.one_per_shard(groups, 3) == ["n1", "n3", "n5"]
    assert shards.same_shard(groups, 3) == ["n1", "n2", "n4"]
    assert shards.same_shard(groups, 4) is None
    assert shards.one_per_shard(groups, 4) is None


def _phases(ratio: float | None, lost: int = 0) -> dict[str, Any]:
    return {
        "latency": {
            "ratio_cluster_over_standalone": {"p50": ratio},
            "rounds_detail": [{"label": "cluster-r0", "lost": lost, "duplicates": 0}],
        },
        "pods": {"lost": 0, "duplicates": 0},
    }


def test_latency_target_is_ten_percent() -> None:
    assert capacityreport.evaluate(_phases(1.10))[0]["met"] is True
    assert capacityreport.evaluate(_phases(1.11))[0]["met"] is False
    assert capacityreport.evaluate(_phases(None))[0]["met"] is None


def test_a_lost_job_fails_its_row() -> None:
    rows = capacityreport.evaluate(_phases(1.0, lost=1))
    assert [(r["figure"], r["met"]) for r in rows[1:]] == [
        ("lost / duplicated (latency cluster-r0)", False),
        ("lost / duplicated (pods)", True),
    ]
