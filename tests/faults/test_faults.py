"""The fault-injection suite (issue 9): every fault against the whole system as real processes.

A private redis-server (AOF), 3 pods, 2 writers and a few dozen ``dispatch-runner`` agents behind
a round-robin TCP proxy (``tests/faults/cluster.py``); each scenario's fault, load and counting
are in ``tests/faults/scenarios.py``. Target for every row: 0 failed, 0 lost, 0 run twice within
an attempt, 0 orphans, the first job starting within 2 s of the fault's end.
"""

from __future__ import annotations

import pytest

from tests.faults import scenarios
from tests.faults.cluster import Cluster
from tests.faults.conftest import record

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_fault(cluster: Cluster, name: str) -> None:
    row = scenarios.run(cluster, name)
    table = record(row)
    problems = row.problems()
    details = "\n".join(row.details[:20])
    assert not problems, f"{name}: {', '.join(problems)}\n{table}\n{details}"
