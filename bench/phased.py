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

from websockets.asyncio.client import ClientConnection

from bench import common
from bench.common import SimConfig, SimRunner
from bench.harness import Harness, Sims
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

    async def start_sims(
        self,
        runners: list[SimRunner],
        per_process: int,
        *,
        poll_timeout: int = 30,
        send_running: bool = True,
        connect_concurrency: int = 100,
        timeout: float = 180.0,
    ) -> Sims:
        """``Harness.start_sims`` with ``bench.phased`` children."""
        procs = max(1, math.ceil(len(runners) / max(1, per_process)))
        chunk = math.ceil(len(runners) / procs) if runners else 0
        children = []
        for i in range(procs):
            cfg_path = self.work_dir / f"sim-{len(self.procs.children) + 1:03d}.json"
            cfg = SimConfig(
                runners=runners[i * chunk : (i + 1) * chunk],
                out=str(cfg_path.with_suffix(".out.json")),
                poll_timeout=poll_timeout,
                send_running=send_running,
                connect_concurrency=connect_concurrency,
                compression=self.compression,
            )
            common.dump(cfg_path, cfg)
            args = (str(cfg_path), str(self.ready_spread))
            child = await self.procs.python(f"sim{i}", "bench.phased", *args, env={}, pipes=True)
            child.config = cfg_path
            children.append(child)
        events = await asyncio.gather(*(c.event("connected", timeout) for c in children))
        errors = sum(int(e.get("errors", 0)) for e in events)
        first = next((str(e["first_error"]) for e in events if e.get("first_error")), "")
        return Sims(children, sum(int(e["connected"]) for e in events), errors, first)


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
