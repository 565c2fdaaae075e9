"""Redis's own CPU per job lifecycle, function by function (issue 11: lifecycles/s).

    .venv/bin/python -m bench.fcallcost --redis-url URL [--jobs 2000]   (a Redis of your own)
    .venv/bin/python -m bench.fcallcost --callgrind [--library OLD.lua] [--jobs 200]

Drives the lifecycle the throughput scenario drives, from this process alone (no pod, runner or
writer), in rounds of one job per runner, 200 runners as in that scenario: ``submit`` x 200,
``ready`` x 200 (each takes a job), ``start`` x 200, ``finish`` x 200, then one ``pump`` and one
``record`` of the round's results, as a writer does. Each phase runs one function only, so
Redis's own meter, read before and after, gives that function's cost:

- by default, ``INFO commandstats``: the µs Redis spent inside ``FCALL`` (inner commands
  included). Redis's CPU for the functions' work, free of the network and of Python, but as
  noisy as the machine is;
- with ``--callgrind``: a private ``redis-server`` runs under ``valgrind --tool=callgrind``,
  counting only inside ``fcallCommand``; each phase's instruction count is read with
  ``callgrind_control``. The same for the same library and Redis, whatever else the machine does:
  the figure to compare two versions of the library by (``--library``: a file such as
  ``git show REV:dispatcher/lua/dispatch.lua > old.lua``).

Output: one JSON object: per function the calls, the mean per call and the cost per lifecycle
(µs or instructions), and their sum per lifecycle.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from bench.servers import free_port, wait_for
from dispatcher import functions
from dispatcher.keys import Keys

SPEC = "bench"
RUNNERS = 200  # as the throughput scenario; the leases set is then past zset-max-listpack-entries
PAYLOAD = json.dumps({"t0": 1764000000.123456, "i": 12345})
STDOUT = "ok\n"
LIBRARY = Path(functions.__file__).with_name("lua") / "dispatch.lua"


class Meter:
    """Cost per function name; ``read`` returns Redis's running total (µs or instructions)."""

    def __init__(self, client: redis.Redis, read: Callable[[], int]) -> None:
        self.client = client
        self.read = read
        self.cost: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    def phase(self, name: str, calls: list[functions.Call[Any]]) -> list[Any]:
        before = self.read()
        replies = [functions.run_sync(self.client, call) for call in calls]
        self.cost[name] += self.read() - before
        self.calls[name] += len(calls)
        return replies

    def report(self, jobs: int, unit: str) -> dict[str, object]:
        per_fn = {
            name: {
                "calls": self.calls[name],
                f"{unit}_per_call": round(cost / self.calls[name], 1),
                f"{unit}_per_lifecycle": round(cost / jobs, 1),
            }
            for name, cost in self.cost.items()
        }
        total = sum(self.cost.values()) / jobs
        return {
            "jobs": jobs,
            "unit": unit,
            "functions": per_fn,
            f"{unit}_per_lifecycle": round(total),
        }


def _runners(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Runner name -> its connection generation, every runner attached to pod0."""
    conns = {}
    for i in range(RUNNERS):
        name = f"r{i}"
        functions.run_sync(client, functions.runner_add(keys, name, "x" * 64, [SPEC]))
        reply = functions.run_sync(client, functions.attach(keys, name, "pod0"))
        conns[name] = int(reply["conn"])
    return conns


def _finish(keys: Keys, name: str, job_id: str, attempt: int) -> functions.Call[Any]:
    return functions.finish(
        keys,
        name,
        job_id,
        attempt,
        "completed",
        exit_code=0,
        results=None,
        stdout=STDOUT,
        stderr=None,
        error="",
    )


def lifecycles(meter: Meter, keys: Keys, conns: dict[str, int], jobs: int) -> int:
    """At least ``jobs`` lifecycles, in rounds of one job per runner, function by function;
    returns how many ran."""
    done = 0
    while done < jobs:
        ids = [str(uuid.uuid4()) for _ in conns]
        meter.phase("submit", [functions.submit(keys, i, SPEC, PAYLOAD, 0, 600, 3) for i in ids])
        offers = meter.phase("ready", [functions.ready(keys, n, c, "") for n, c in conns.items()])
        runs = [
            (name, str(offer["job"]), int(offer["attempt"]), conn)
            for (name, conn), offer in zip(conns.items(), offers, strict=True)
        ]
        meter.phase("start", [functions.start(keys, n, i, a, "pod0", c) for n, i, a, c in runs])
        meter.phase("finish", [_finish(keys, n, i, a) for n, i, a, _ in runs])
        pumped = meter.phase("pump", [functions.pump(keys, 1000, 60000, 60000, 100000)])[0]
        entries = [str(e) for e in pumped["results"]]
        meter.phase("record", [functions.record(keys, entries, 3600, [])])
        done += len(runs)
    return done


def _fcall_usec(client: redis.Redis) -> Callable[[], int]:
    def read() -> int:
        return int(client.info("commandstats").get("cmdstat_fcall", {}).get("usec", 0))

    return read


def _callgrind_total(out: Path) -> Callable[[], int]:
    """Instructions counted so far: a dump of the running counters (then deleted), summed."""
    seen = [0]

    def read() -> int:
        subprocess.run(["callgrind_control", "--dump"], check=True, capture_output=True)
        for dump in sorted(out.parent.glob(out.name + ".*")):
            match = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.M)
            seen[0] += int(match.group(1)) if match else 0
            dump.unlink()
        return seen[0]

    return read


@contextmanager
def _callgrind_redis() -> Iterator[tuple[redis.Redis, Path]]:
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("--callgrind needs valgrind (Debian package valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        out, port = Path(tmp) / "callgrind.out", free_port()
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        argv += ["--toggle-collect=fcallCommand", "redis-server", "--port", str(port)]
        argv += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            wait_for(lambda: bool(client.ping()), "redis-server under callgrind", timeout=60)
            yield client, out
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def measure(
    client: redis.Redis, read: Callable[[], int], library: str, jobs: int, unit: str
) -> dict[str, object]:
    client.function_load(library, replace=True)
    keys = Keys(f"fcost{uuid.uuid4().hex[:8]}")
    try:
        conns = _runners(client, keys)
        lifecycles(Meter(client, read), keys, conns, len(conns))  # warm-up: every key exists
        meter = Meter(client, read)
        return meter.report(lifecycles(meter, keys, conns, jobs), unit)
    finally:
        for name in client.scan_iter(match=f"{keys.namespace}:*", count=1000):
            client.delete(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--redis-url", help="a Redis no one else uses (µs from commandstats)")
    where.add_argument("--callgrind", action="store_true", help="count instructions instead")
    parser.add_argument(
        "--library",
        type=Path,
        default=LIBRARY,
        help="the Lua library to load (it replaces that Redis's: with --redis-url, a Redis of "
        "your own)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="lifecycles (rounds of 200)")
    args = parser.parse_args(argv)
    library = args.library.read_text()
    if args.callgrind:
        with _callgrind_redis() as (client, out):
            read = _callgrind_total(out)
            report = measure(client, read, library, args.jobs or RUNNERS, "instructions")
    else:
        client = redis.Redis.from_url(args.redis_url)
        report = measure(client, _fcall_usec(client), library, args.jobs or 10 * RUNNERS, "us")
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
