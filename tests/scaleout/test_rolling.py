"""Rolling restart of 3 pods behind HAProxy under load (issue 13), as real processes.

HAProxy (the example config of deploy/haproxy, rendered for loopback ports), 3 pods, 2 writers,
4 agents and 56 simulated runners through HAProxy, a steady load of jobs of 0.2 to 4 s; each pod
in turn gets SIGTERM, closes its runners with 1001, exits, and is started again on its port
(``tests/scaleout/rolling.py``). Every job must end processed exactly once: 0 lost, 0 executed
twice (counted on the runner side), and every runner must be back. ``python -m bench.rolling``
runs the same at 300 runners and reports the latencies.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from tests.scaleout.haproxykit import HAVE_HAPROXY
from tests.scaleout.rolling import RollingWorld, RollSize
from tests.scaleout.rolltally import unreturned

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not HAVE_HAPROXY, reason="haproxy is not installed (apt-get install -y haproxy)"
    ),
]


@pytest.fixture
def world(tmp_path, redis_url):
    world = RollingWorld(tmp_path, RollSize.named("ci"), redis_url, "roll" + uuid.uuid4().hex[:10])
    try:
        world.start()
        yield world
    finally:
        world.close()
        client = redis.Redis.from_url(redis_url)
        names = list(client.scan_iter(match=f"{world.namespace}:*", count=1000))
        names += list(client.scan_iter(match=f"rq:*{world.namespace}*", count=1000))
        if names:
            client.delete(*names)
        client.close()


def test_rolling_restart_behind_haproxy_loses_and_doubles_no_job(world):
    outcome = world.run()
    result = outcome.tally
    report = "\n".join(
        [
            *(r.summary() for r in outcome.restarts),
            *outcome.lb_lines(),
            *(f"{phase}: {stats.line()}" for phase, stats in result.latency.items()),
            *result.details[:20],
        ]
    )
    assert not result.problems(), f"{result.problems()}\n{report}"
    assert result.executions == result.submitted, report
    # every pod held runners when it was stopped, exited 0 and came back
    assert all(r.connections > 0 and r.exit_code == 0 for r in outcome.restarts), report
    # every simulated runner closed with 1001 reconnected, and all runners are connected again
    sim = outcome.sim
    assert sum(1 for _, code, _ in sim["closes"] if code == 1001) > 0, report
    assert {code for _, code, _ in sim["closes"]} <= {1001}, sim["closes"]
    assert unreturned(sim["closes"], sim["reconnects"]) == [], report
    assert sum(outcome.sessions_after.values()) == outcome.runners, outcome.sessions_after
    assert sim["protocol_errors"] == 0
    print(report)  # shown with -s: the restarts and the latency per phase
