"""On a Redis Cluster, the durability wait (WAIT/WAITAOF) must run on the node that recorded the
result, on the same connection (``functions.run_then``'s pipeline): a keyless WAIT sent to another
node would count another shard's replicas (0 here: only the namespace's shard has one). Several
fresh clients, since each picks its default node at random."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dispatcher import functions, redisconn
from dispatcher.keys import Keys
from tests.scaleout.servers import Servers
from tests.scaleout.topologies import start_cluster_failover

pytestmark = pytest.mark.timeout(120)
HAVE_REDIS = shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


async def test_wait_runs_on_the_node_that_wrote(tmp_path: Path) -> None:
    if not HAVE_REDIS:
        pytest.skip("redis-server and redis-cli are not installed (apt-get install redis-server)")
    servers = Servers(tmp_path)
    try:
        # slot 14908: on the third primary (redis-cli spreads slots in thirds, in seed order),
        # not the first seed, which a client may take as its default node
        ns = "{durable2}"
        topology = start_cluster_failover(servers, ns, replicas=1)
        first_seed = int(topology.redis_url.split("//")[1].split(",")[0].rsplit(":", 1)[1])
        assert topology.primary != first_seed
        keys = Keys(ns)
        for _ in range(6):
            client = redisconn.async_client(topology.redis_url, 4, 5.0)
            try:
                call = functions.submit(keys, "", "spec", "{}", 0, 60, 1)
                job, replicas = await functions.run_then(client, call, ("WAIT", 1, 5000))
                assert job and replicas == 1
            finally:
                await client.aclose()
    finally:
        servers.stop()
