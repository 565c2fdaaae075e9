"""Simulated runners whose polls run at independent phases, as real runners' do.

``bench.sim`` connects its runners in one burst and each sends ``ready`` at once. In poll mode
(``DISPATCHER_WAKE=poll``) a waiting runner's long poll retries every interval T counted from that
``ready``, and a runner that took a job re-readies right after the poll that gave it one, so burst-
connected runners keep polling nearly in lockstep: N of them wait like one poller (p50 ≈ T/2).
Runners that start, and finish jobs, at unrelated times poll at independent phases instead, and a
job then waits for the next poll of *any* of them (p50 ≈ 0.69·T/N). Here every runner sends its
first ``ready`` a uniformly random 0..``spread`` s after connecting, which makes its phase uniform
over the interval whatever its connect time was.

``python -m bench.phased CONFIG.json SPREAD`` is the child process (``bench.sim``'s protocol and
results); ``PhasedHarness`` is a ``Harness`` whose ``start_sims`` starts it.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from websockets.asyncio.client import ClientConnection

from bench import common
from bench.common import SimConfig, SimRunner
from bench.harness import Harness
from bench.sim import Simulator


class PhasedSimulator(Simulator):
    """``bench.sim``'s runners, each holding its first ``ready`` back a random 0..spread s."""

    def __init__(self, cfg: SimConfig, spread: float, rng: random.Random) -> None:
        super().__init__(cfg)
        self.spread = spread
        self.rng = rng

    async def open(self, spec: SimRunner) -> ClientConnection:
        ws = await super().open(spec)
        await asyncio.sleep(self.rng.uniform(0.0, self.spread))
        return ws


@dataclass
class PhasedHarness(Harness):
    """A harness whose runners poll at independent phases (first ``ready`` spread over T)."""

    ready_spread: float = 1.0

    @classmethod
    def of(cls, h: Harness, spread: float) -> PhasedHarness:
        """The same run (Redis, processes, namespace prefix), other simulators."""
        fields = {name: getattr(h, name) for name in h.__dataclass_fields__}
        return cls(**fields, ready_spread=spread)

    def sim_command(self, config: Path) -> tuple[str, ...]:
        """``bench.phased`` children: each runner sends its first `ready` at a random moment
        within ``ready_spread`` seconds."""
        return ("bench.phased", str(config), str(self.ready_spread))


def main() -> None:
    cfg = common.load(sys.argv[1], SimConfig)
    spread = float(sys.argv[2])
    if not math.isfinite(spread) or spread < 0:
        raise SystemExit(f"bench.phased: spread must be a finite number of seconds >= 0: {spread}")
    simulator = PhasedSimulator(cfg, spread, random.Random())
    try:
        import uvloop  # the lighter loop bench.sim uses too, when installed
    except ImportError:
        asyncio.run(simulator.run())
    else:
        uvloop.run(simulator.run())


if __name__ == "__main__":
    main()
