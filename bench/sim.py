"""Runner simulator: many runners in one process, each a raw ``websockets`` client.

``python -m bench.sim CONFIG.json`` (started by the harness). Each runner opens its channel with
the reference agent's own connection options (``runner.channel.open_channel``), then speaks
PROTOCOL.md in the smallest loop that keeps it available: ``ready`` → ``job`` → ``running`` and
``completed`` sent back to back (``running`` optional) → terminal ``ack`` → ``ready`` …; ``no_job``
is answered with ``ready``; a ``cancel`` with ``canceled``. On a ``job`` frame it records the
arrival time and, when the payload carries ``t0`` (the producer's clock just before the submit
call, same machine), the latency ``now - t0``.

Stdout: ``{"event": "connected", ...}`` once every runner has connected (or failed to) and sent
its first ``ready``; ``{"event": "done"}`` after ``stop`` on stdin, when the results file is
written. The process then exits at once; the kernel closes the sockets.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from dataclasses import dataclass

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.common import JobSeen, SimConfig, SimResult, SimRunner, dump, load, say
from runner.channel import MAX_INCOMING_MESSAGE, open_channel

TERMINAL = frozenset({"completed", "failed", "canceled"})
_decode = msgspec.json.Decoder().decode
_encoder = msgspec.json.Encoder()


def _encode(message: dict[str, object]) -> str:
    """A text frame (the protocol closes binary frames with 1003)."""
    return _encoder.encode(message).decode()


@dataclass(slots=True)
class Conn:
    """One runner's connection and the job it holds (``""`` while it has none)."""

    ws: ClientConnection
    index: int
    job: str = ""
    seen: JobSeen | None = None


class Simulator:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.ready_frame = _encode({"event": "ready", "poll_timeout": cfg.poll_timeout})
        self.sem = asyncio.Semaphore(cfg.connect_concurrency)
        self.conns: list[Conn] = []
        self.attempted = 0
        self.all_attempted = asyncio.Event()
        self.connect_started = 0.0
        self.connected_at: list[float] = []
        self.connect_errors = 0
        self.first_connect_error = ""
        self.jobs: list[JobSeen] = []
        self.acks: list[float] = []
        self.no_jobs: list[float] = []
        self.cancels = 0
        self.closed: dict[str, int] = {}
        self.protocol_errors = 0
        self.stopping = False

    async def run(self) -> None:
        self.connect_started = time.time()
        tasks = [asyncio.create_task(self.runner(r)) for r in self.cfg.runners]
        if not tasks:
            self.all_attempted.set()
        await self.all_attempted.wait()
        say(
            "connected",
            connected=len(self.conns),
            errors=self.connect_errors,
            first_error=self.first_connect_error,
        )
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "stop":
                break
        self.stopping = True
        dump(self.cfg.out, self.result())
        say("done")
        os._exit(0)  # thousands of sockets: let the kernel close them

    async def open(self, spec: SimRunner) -> ClientConnection:
        """The reference agent's own connection (``--no-compression``: without deflate)."""
        if self.cfg.compression:
            return await open_channel(spec.url, spec.token, open_timeout=self.cfg.open_timeout)
        return await connect(
            spec.url,
            additional_headers={"Authorization": f"Bearer {spec.token}"},
            open_timeout=self.cfg.open_timeout,
            max_size=MAX_INCOMING_MESSAGE,
            compression=None,
        )

    def _attempt_done(self) -> None:
        self.attempted += 1
        if self.attempted == len(self.cfg.runners):
            self.all_attempted.set()

    async def runner(self, spec: SimRunner) -> None:
        async with self.sem:
            try:
                ws = await self.open(spec)
                await ws.send(self.ready_frame)
            except Exception as exc:  # refused, timed out, reset: counted, never fatal
                self.connect_errors += 1
                if not self.first_connect_error:
                    self.first_connect_error = f"{spec.name}: {type(exc).__name__}: {exc}"[:300]
                self._attempt_done()
                return
            self.connected_at.append(time.time())
        conn = Conn(ws, len(self.conns))
        self.conns.append(conn)
        self._attempt_done()
        try:
            async for text in ws:
                await self.handle(conn, text)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # a frame this loop cannot follow: counted, then the runner stops
            self.protocol_errors += 1
        if not self.stopping:
            code = str(ws.close_code)
            self.closed[code] = self.closed.get(code, 0) + 1

    async def handle(self, conn: Conn, text: str | bytes) -> None:
        now = time.time()
        msg = _decode(text)
        event = msg.get("event")
        ws = conn.ws
        if event == "job":
            job, attempt = msg["job"], msg["attempt"]
            payload = msg.get("payload")
            t0 = payload.get("t0") if isinstance(payload, dict) else None
            latency = now - t0 if isinstance(t0, int | float) else None
            conn.seen = JobSeen(job, attempt, now, latency, conn.index)
            self.jobs.append(conn.seen)
            conn.job = job
            if self.cfg.send_running:
                await ws.send(_encode({"event": "running", "job": job, "attempt": attempt}))
            await ws.send(
                _encode(
                    {
                        "event": "completed",
                        "job": job,
                        "attempt": attempt,
                        "exit_code": 0,
                        "results": None,
                    }
                )
            )
        elif event == "ack":
            if msg.get("of") in TERMINAL and msg.get("job") == conn.job:
                self.acks.append(now)
                if conn.seen is not None:
                    conn.seen.acked = now
                conn.job = ""
                await ws.send(self.ready_frame)
        elif event == "no_job":
            self.no_jobs.append(now)
            await ws.send(self.ready_frame)
        elif event == "cancel":
            self.cancels += 1
            if msg.get("job") == conn.job:
                await ws.send(
                    _encode({"event": "canceled", "job": conn.job, "attempt": msg.get("attempt")})
                )
        else:
            self.protocol_errors += 1

    def result(self) -> SimResult:
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return SimResult(
            runners=len(self.cfg.runners),
            connected=len(self.conns),
            connect_errors=self.connect_errors,
            first_connect_error=self.first_connect_error,
            connect_started=self.connect_started,
            connected_at=sorted(self.connected_at),
            jobs=self.jobs,
            acks=self.acks,
            no_jobs=self.no_jobs,
            cancels=self.cancels,
            closed=self.closed,
            protocol_errors=self.protocol_errors,
            rss_bytes=rss_kib * 1024,
        )


async def amain(cfg: SimConfig) -> None:
    await Simulator(cfg).run()


def main() -> None:
    cfg = load(sys.argv[1], SimConfig)
    try:
        import uvloop  # a lighter event loop for the load generator, when installed
    except ImportError:
        asyncio.run(amain(cfg))
    else:
        uvloop.run(amain(cfg))


if __name__ == "__main__":
    main()
