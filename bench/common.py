"""What the harness and its child processes share: configs, results and the stdio handshake.

A child process (``bench.sim``, ``bench.producer``) gets the path of a JSON config as its only
argument, prints one JSON object per line on stdout (``{"event": "ready"}`` when it is set up,
``{"event": "done"}`` once its results file is written) and takes one-word commands on stdin
(``go``, ``stop``). Results travel through a JSON file named in the config.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

SPEC = "bench"


class SimRunner(msgspec.Struct, array_like=True):
    name: str
    token: str
    url: str


class SimConfig(msgspec.Struct):
    """One runner-simulator process."""

    runners: list[SimRunner]
    out: str
    poll_timeout: int = 30
    send_running: bool = True
    connect_concurrency: int = 100
    open_timeout: float = 60.0
    compression: bool = True  # permessage-deflate offered, as the reference agent does


class JobSeen(msgspec.Struct, array_like=True):
    job: str
    attempt: int
    arrived: float  # epoch s, this machine's clock
    latency: float | None  # arrived - payload["t0"], when the payload has t0
    conn: int = 0  # which of the process's connections received it
    acked: float = 0.0  # epoch of the terminal `ack` for it (0: none)


class SimResult(msgspec.Struct):
    runners: int
    connected: int
    connect_errors: int
    first_connect_error: str
    connect_started: float
    connected_at: list[float]
    jobs: list[JobSeen]
    acks: list[float]  # epoch of every terminal `ack`
    no_jobs: list[float]  # epoch of every `no_job`
    cancels: int
    closed: dict[str, int]  # close code -> connections the server closed while running
    protocol_errors: int
    rss_bytes: int


class ProducerConfig(msgspec.Struct):
    """One producer process: ``rate`` jobs/s (open loop) or as fast as taken (``max``)."""

    redis_url: str
    namespace: str
    out: str
    results_redis_url: str = ""  # a cluster's rq Redis (the client's Settings require it there)
    mode: str = "rate"
    rate: float = 100.0
    duration: float = 20.0
    max_backlog: int = 2000
    spec: str = SPEC


class ProducerResult(msgspec.Struct):
    submitted: list[tuple[str, float]]  # job id, t0 (epoch s just before the submit call)
    errors: int
    first_error: str
    started: float
    ended: float
    max_lag: float  # rate mode: the worst lateness behind the schedule, s
    submit_call: list[float]  # duration of each submit call, s (same order as submitted)
    cpu_seconds: float  # this process's CPU time while submitting


def load(path: str | Path, kind: type[T]) -> T:
    return msgspec.json.decode(Path(path).read_bytes(), type=kind)


def dump(path: str | Path, value: Any) -> None:
    Path(path).write_bytes(msgspec.json.encode(value))


def say(event: str, **fields: Any) -> None:
    """One line on stdout for the harness."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def recorded_args(args: Any) -> dict[str, Any]:
    """A run's command-line options as the results JSON keeps them: paths relative to the
    current directory when they lie under it (a results file names no path of the machine)."""
    out: dict[str, Any] = {}
    for name, value in vars(args).items():
        if isinstance(value, Path):
            try:
                value = value.resolve().relative_to(Path.cwd().resolve())
            except ValueError:
                value = Path(value.name)
            value = str(value)
        out[name] = value
    return out
