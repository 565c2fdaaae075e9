"""Measure what a flood of bad handshakes does to a pod: ``python -m bench.flood``.

A pod runs as a real ``dispatcher serve`` process on a fresh namespace of the Redis at
``DISPATCHER_REDIS_URL`` (default 127.0.0.1:6379). Then, each printed as a table row:

1. dispatch latency of connected runners (submit -> `job` frame), without a flood, then while a
   separate process sends bad handshakes from ``--flooders`` connections non-stop (bad tokens,
   oversized heads, garbage, half heads held to the deadline);
2. the pod's memory after one client sent ``--endless-mb`` MB of endless header lines;
3. how many of ``--held`` half-sent upgrade requests are still open after the handshake timeout.

Numbers only: nothing here passes or fails (the tests assert behaviour, not speed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import websockets

from bench import deps
from bench.procs import Procs, free_port, http_status
from dispatcher import functions
from dispatcher.keys import Keys
from dispatcher.tokens import new_token, token_hash

SPEC = "flood-bench"
HEAD = (
    "GET /v1/runners/{runner}/channel HTTP/1.1\r\nHost: pod\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
)


def bad_requests() -> list[bytes]:
    """One of each kind of bad handshake the flood sends, in turn."""
    head = HEAD.format(runner="r0")
    return [
        (head + "Authorization: Bearer wrong\r\n\r\n").encode(),
        (HEAD.format(runner="ghost") + "Authorization: Bearer wrong\r\n\r\n").encode(),
        (head + "X-Long: " + "y" * 9000 + "\r\n\r\n").encode(),
        (head + "".join(f"X-H{i}: v\r\n" for i in range(100)) + "\r\n").encode(),
        b"\x16\x03\x01\x02\x00 not http\r\n\r\n",
        head.encode(),  # never finished: answered 408 at the deadline
    ]


async def one_bad(port: int, data: bytes) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "connect-error"
    try:
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        parts = line.split()
        return parts[1].decode() if len(parts) > 1 else "no-answer"
    except (OSError, TimeoutError):
        return "reset"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def flood(port: int, flooders: int, stop: asyncio.Event) -> dict[str, int]:
    """The flooder process: bad handshakes from ``flooders`` connections until ``stop``."""
    tally: dict[str, int] = {}
    requests = bad_requests()

    async def loop(offset: int) -> None:
        # one connection in 8 sends half heads (each held to the deadline), the rest the others
        kinds = requests[-1:] if offset % 8 == 0 else requests[:-1]
        i = offset
        while not stop.is_set():
            status = await one_bad(port, kinds[i % len(kinds)])
            tally[status] = tally.get(status, 0) + 1
            i += 1

    tasks = [asyncio.create_task(loop(i)) for i in range(flooders)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return tally


class Runner:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws

    async def expect(self, event: str) -> dict[str, object]:
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if message["event"] == event:
                return dict(message)


async def connect_runners(port: int, runners: list[tuple[str, str]]) -> list[tuple[str, Runner]]:
    """Connected before any flood: the flood comes from this host too, and a source over its
    failed-authentication rate is refused whatever token it sends."""
    conns = []
    for name, token in runners:
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/v1/runners/{name}/channel",
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=30,
        )
        conns.append((name, Runner(ws)))
    return conns


async def dispatch_latencies(
    client: redis.Redis, keys: Keys, conns: list[tuple[str, Runner]], jobs: int
) -> list[float]:
    """Submit ``jobs`` one at a time to runners already waiting; seconds from submit to job."""
    latencies = []
    for i in range(jobs):
        name, runner = conns[i % len(conns)]
        await runner.ws.send(json.dumps({"event": "ready", "poll_timeout": 60}))
        while client.zscore(keys.idle(SPEC), name) is None:  # waiting in its long poll
            await asyncio.sleep(0.002)
        body = json.dumps({"command": ["true"]})
        start = time.perf_counter()
        job_id = functions.run_sync(client, functions.submit(keys, "", SPEC, body, 0, 60, 1))
        job = await runner.expect("job")
        latencies.append(time.perf_counter() - start)
        assert job["job"] == job_id
        done = {"event": "completed", "job": job_id, "attempt": 1, "exit_code": 0}
        await runner.ws.send(json.dumps({**done, "results": None}))
        await runner.expect("ack")
    return latencies


def summary(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p = statistics.quantiles(ms, n=100)
    return f"p50 {p[49]:.2f} ms, p95 {p[94]:.2f} ms, p99 {p[98]:.2f} ms, max {ms[-1]:.2f} ms"


async def endless_headers(port: int, megabytes: int) -> tuple[int, str]:
    """Send header lines (reading meanwhile) until the pod answers or ``megabytes`` went out;
    the bytes sent and the status received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    line = b"X-More: " + b"y" * 1000 + b"\r\n"

    async def pump() -> None:
        nonlocal sent
        with contextlib.suppress(OSError):
            writer.write(HEAD.format(runner="r0").encode())
            while sent < megabytes * 1024 * 1024:
                writer.write(line * 64)
                sent += len(line) * 64
                await writer.drain()

    pumping = asyncio.create_task(pump())
    status = "no-answer"
    with contextlib.suppress(OSError, TimeoutError):
        answer = await asyncio.wait_for(reader.readline(), 30)
        status = answer.split()[1].decode() if len(answer.split()) > 1 else "no-answer"
    pumping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pumping
    writer.close()
    return sent, status


async def held_half_handshakes(port: int, count: int, wait: float) -> int:
    """Open ``count`` connections that send half an upgrade; how many are open after ``wait``."""
    conns = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD.format(runner="r0").encode())
        conns.append((reader, writer))
    await asyncio.sleep(wait)
    still_open = 0
    for reader, writer in conns:
        try:
            data = await asyncio.wait_for(reader.read(), 0.01)
            still_open += 0 if data is not None and reader.at_eof() else 1
        except TimeoutError:
            still_open += 1
        except OSError:
            pass
        writer.close()
    return still_open


async def main_async(args: argparse.Namespace) -> None:
    psutil = deps.psutil()
    url = os.environ.get("DISPATCHER_REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = "flood" + uuid.uuid4().hex[:8]
    keys = Keys(namespace)
    client = redis.Redis.from_url(url, decode_responses=True)
    port = free_port()
    env = {
        "DISPATCHER_REDIS_URL": url,
        "DISPATCHER_NAMESPACE": namespace,
        "DISPATCHER_HANDSHAKE_TIMEOUT": str(args.handshake_timeout),
        "DISPATCHER_CONNECT_RATE": "100000",
    }
    with tempfile.TemporaryDirectory() as work:
        procs = Procs(Path(work))
        try:
            pod = await procs.python("pod", "dispatcher", "serve", "--port", str(port), env=env)
            while await http_status(port, "/readyz") != 200:
                await asyncio.sleep(0.1)
            runners = []
            for i in range(args.runners):
                token = new_token()
                call = functions.runner_add(keys, f"r{i}", token_hash(token), [SPEC])
                functions.run_sync(client, call)
                runners.append((f"r{i}", token))
            pod_proc = psutil.Process(pod.pid)
            print(f"pod pid {pod.pid} on port {port}, namespace {namespace}")

            conns = await connect_runners(port, runners)
            base = await dispatch_latencies(client, keys, conns, args.jobs)
            print(f"| without a flood | {args.jobs} jobs | {summary(base)} |")

            flooder = await procs.python(
                "flooder", "bench.flood", "--flood-only", str(port), str(args.flooders),
                env=env, pipes=True,
            )  # fmt: skip
            await asyncio.sleep(1.0)  # let the flood reach its pace
            pod_proc.cpu_percent()
            during = await dispatch_latencies(client, keys, conns, args.jobs)
            cpu = pod_proc.cpu_percent()
            assert flooder.proc.stdin is not None
            flooder.proc.stdin.close()
            tally = json.loads((await flooder.event("flood-done", 120))["tally"])
            await procs.stop(flooder)
            total = sum(tally.values())
            print(f"| during a flood ({args.flooders} connections) | {args.jobs} jobs | "
                  f"{summary(during)} | pod CPU {cpu:.0f}% |")  # fmt: skip
            print(f"flood: {total} bad handshakes answered as {dict(sorted(tally.items()))}")
            for _, runner in conns:
                await runner.ws.close()

            rss_before = pod_proc.memory_info().rss
            sent, status = await endless_headers(port, args.endless_mb)
            rss_after = pod_proc.memory_info().rss
            print(f"endless header lines: sent {sent / 2**20:.1f} MiB, answered {status}, pod RSS "
                  f"{rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB")  # fmt: skip

            wait = args.handshake_timeout + 3
            still = await held_half_handshakes(port, args.held, wait)
            print(f"{args.held} half upgrades held: {still} still open after {wait:.0f} s")
        finally:
            await procs.stop_all()
            names = list(client.scan_iter(match=f"{namespace}:*", count=1000))
            if names:
                client.delete(*names)
            client.close()


async def flood_only(port: int, flooders: int) -> None:
    """Flood until stdin closes, then print the tally as a JSON event."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    tally = await flood(port, flooders, stop)
    print(json.dumps({"event": "flood-done", "tally": json.dumps(tally)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--flooders", type=int, default=64)
    parser.add_argument("--endless-mb", type=int, default=64)
    parser.add_argument("--held", type=int, default=500)
    parser.add_argument("--handshake-timeout", type=float, default=10.0)
    parser.add_argument("--flood-only", nargs=2, type=int, metavar=("PORT", "FLOODERS"))
    args = parser.parse_args()
    if args.flood_only:
        asyncio.run(flood_only(*args.flood_only))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
