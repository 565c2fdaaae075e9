"""Private Redis topologies for the scale-out tests (a 3-primary Redis Cluster plus a standalone
server for its rq queues, and a Sentinel setup), started once per session and killed at its end.

The code lives in ``bench/servers.py``, shared with the benchmark's capacity scenario."""

from bench.servers import HAVE_REDIS, Servers, free_port, start_cluster, start_sentinel, wait_for

__all__ = ["HAVE_REDIS", "Servers", "free_port", "start_cluster", "start_sentinel", "wait_for"]
