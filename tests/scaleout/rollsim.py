"""Simulated runners that survive pod restarts: many in one process, each reconnecting and
re-attaching the way the reference agent does (PROTOCOL.md rule 1).

``python -m tests.scaleout.rollsim CONFIG.json`` (started by ``tests.scaleout.rolling``). Each
runner opens its channel through the load balancer and loops: ``ready`` -> ``job`` ->
``running`` -> (``heartbeat`` every ``heartbeat_interval``) -> after the payload's ``seconds``,
``completed`` -> its ``ack`` -> ``ready``. When the channel closes (1001 from a draining pod, or
anything else) it waits ``runner.backoff.Backoff``'s delay (the agent's own defaults) and connects
again, then sends its unacknowledged terminal message first, or ``running`` for the job it is
still executing, or ``ready``. A ``cancel`` for its job stops the job and answers ``canceled``.

Every execution (the ``job`` frame's arrival) and every close and reconnect is recorded; SIGTERM
writes them as JSON to the config's ``out`` path and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from runner.backoff import Backoff
from runner.channel import MAX_INCOMING_MESSAGE

TERMINAL = frozenset({"completed", "failed", "canceled"})


@dataclass
class Record:
    """What the runners of this process saw (times are ``time.time()``)."""

    starts: list[tuple[str, int, str, float]] = field(default_factory=list)  # job, attempt, who, t
    ends: list[tuple[str, int, float]] = field(default_factory=list)
    closes: list[tuple[str, int, float]] = field(default_factory=list)  # runner, code, t
    reconnects: list[tuple[str, float, float]] = field(default_factory=list)  # runner, lost, back
    connect_errors: dict[str, int] = field(default_factory=dict)
    cancels: list[tuple[str, str]] = field(default_factory=list)  # job, reason
    protocol_errors: int = 0


def _frame(event: str, **fields: Any) -> str:
    return json.dumps({"event": event, **fields})


class SimRunner:
    """One runner: its channel (None while disconnected), its job, its unacked result."""

    def __init__(self, name: str, token: str, url: str, record: Record, seed: int) -> None:
        self.name = name
        self.url = f"{url}/v1/runners/{name}/channel".replace("http", "ws", 1)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.record = record
        self.backoff = Backoff(rng=random.Random(seed))
        self.ws: ClientConnection | None = None
        self.job: dict[str, Any] | None = None  # the `job` frame being executed
        self.held: dict[str, Any] | None = None  # a terminal message not acknowledged yet
        self.work: asyncio.Task[None] | None = None
        self.lost_at: float | None = None

    async def run(self) -> None:
        while True:
            try:
                ws = await connect(
                    self.url,
                    additional_headers=self.headers,
                    open_timeout=15,
                    max_size=MAX_INCOMING_MESSAGE,
                    compression=None,
                )
            except (OSError, TimeoutError, InvalidStatus, ConnectionClosed) as exc:
                kind = f"{exc.response.status_code}" if isinstance(exc, InvalidStatus) else ""
                kind = kind or type(exc).__name__
                self.record.connect_errors[kind] = self.record.connect_errors.get(kind, 0) + 1
                await asyncio.sleep(self.backoff.next_delay())
                continue
            self.backoff.reset()
            if self.lost_at is not None:
                self.record.reconnects.append((self.name, self.lost_at, time.time()))
            await self.session(ws)
            self.lost_at = time.time()
            self.record.closes.append((self.name, ws.close_code or 0, self.lost_at))
            await asyncio.sleep(self.backoff.next_delay())

    async def session(self, ws: ClientConnection) -> None:
        self.ws = ws
        try:
            if self.held is not None:
                await ws.send(json.dumps(self.held))
            elif self.job is not None:
                await ws.send(_frame("running", job=self.job["job"], attempt=self.job["attempt"]))
            else:
                await ws.send(_frame("ready", poll_timeout=30))
            async for text in ws:
                await self.handle(ws, json.loads(text))
        except ConnectionClosed:
            pass
        finally:
            self.ws = None

    async def handle(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event == "job":
            if self.job is not None or self.held is not None:
                self.record.protocol_errors += 1
                return
            self.job = msg
            self.record.starts.append((msg["job"], msg["attempt"], self.name, time.time()))
            # the work starts first: a close that loses this `running` must not lose the job too
            # (the next connection re-attaches with `running`, as rule 1 says)
            self.work = asyncio.create_task(self.execute(msg))
            await self.send(_frame("running", job=msg["job"], attempt=msg["attempt"]))
        elif event == "ack":
            held = self.held
            if held is not None and msg.get("of") in TERMINAL and msg.get("job") == held["job"]:
                self.held = None
                await ws.send(_frame("ready", poll_timeout=30))
        elif event == "no_job":
            await ws.send(_frame("ready", poll_timeout=30))
        elif event == "cancel":
            await self.cancel(msg)
        else:
            self.record.protocol_errors += 1

    async def execute(self, job: dict[str, Any]) -> None:
        """Sleep the payload's ``seconds`` with heartbeats, then hand in ``completed``."""
        payload = job.get("payload") or {}
        end = time.monotonic() + float(payload.get("seconds", 0.1))
        beat = float(job.get("heartbeat_interval") or 5.0)
        ids = {"job": job["job"], "attempt": job["attempt"]}
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(beat, left))
            if time.monotonic() < end:
                await self.send(_frame("heartbeat", **ids))
        self.job = None
        self.record.ends.append((job["job"], job["attempt"], time.time()))
        self.held = {"event": "completed", **ids, "exit_code": 0, "results": None}
        await self.send(json.dumps(self.held))

    async def cancel(self, msg: dict[str, Any]) -> None:
        job = self.job
        if job is None or msg.get("job") != job["job"] or msg.get("attempt") != job["attempt"]:
            return  # about a job this runner no longer runs (a late `running` after completing)
        self.record.cancels.append((job["job"], str(msg.get("reason"))))
        if self.work is not None:
            self.work.cancel()
        self.job = None
        self.held = {"event": "canceled", "job": job["job"], "attempt": job["attempt"]}
        await self.send(json.dumps(self.held))

    async def send(self, text: str) -> None:
        """Send on the channel if there is one; a message lost to a close is resent on resume
        (a held result) or replaced by the next ``running`` (a heartbeat)."""
        ws = self.ws
        if ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(text)


async def amain(config: dict[str, Any]) -> None:
    record = Record()
    runners = [
        SimRunner(name, token, config["url"], record, seed=i)
        for i, (name, token) in enumerate(config["runners"])
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks = []
    for runner in runners:
        tasks.append(asyncio.create_task(runner.run()))
        await asyncio.sleep(config.get("spread", 0.0))  # not all handshakes in one instant
    await stop.wait()
    # whole or not at all: the harness reads the file as soon as it appears
    out = Path(config["out"])
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(asdict(record)))
    os.replace(partial, out)


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(amain(config))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
