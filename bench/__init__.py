"""Benchmark harness: dispatch latency, throughput, idle cost and memory, against a poll baseline.

Run ``python -m bench`` (or ``make bench``); ``python -m bench --help`` lists the scenarios and
sizes. Every scenario starts its own processes on this machine — dispatcher pods
(``python -m dispatcher serve``), result writers (``python -m worker_bridge``), runner simulators
(``python -m bench.sim``) and producers (``python -m bench.producer``) — in a fresh namespace that
is deleted at the end. Results go to ``bench/results/``: one JSON file and one PNG chart per run,
and ``SUMMARY.md`` (every figure against its target).

The harness needs ``psutil`` and ``matplotlib`` besides the project's own dependencies; they are
imported lazily (``bench.deps``) so that a missing one fails with an explicit message.
"""
