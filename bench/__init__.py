"""Benchmark harness: dispatch latency, throughput, idle cost and memory, against a poll baseline.

Run ``python -m bench`` (or ``make bench``); ``python -m bench --help`` lists the scenarios and
sizes. Every scenario starts its own processes on this machine — dispatcher pods
(``python -m dispatcher serve``), result writers (``python -m worker_bridge``), runner simulators
(``python -m bench.sim``) and producers (``python -m bench.producer``) — in a fresh namespace that
is deleted at the end. Results go to ``bench/results/``: one JSON file and one PNG chart per run,
and ``SUMMARY.md`` (every figure against its target).

``python -m bench.capacity`` (issue 13) starts its own standalone Redis and 3-primary Redis
Cluster and measures capacity on both: dispatch latency of each, the most jobs/s of one namespace
(one shard) with 2 and 3 pods, namespaces on one shard vs three, and runners held by one pod
(``capacity-<run>.json``/``.md`` and ``CAPACITY.md`` in ``bench/results/``).

The harness needs ``psutil`` and ``matplotlib`` besides the project's own dependencies; they are
imported lazily (``bench.deps``) so that a missing one fails with an explicit message.
"""
