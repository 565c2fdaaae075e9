"""The physical floor of a delivery on this machine, with no dispatcher code in the path.

``python -m bench.chainfloor --redis-url URL --rate R --count N --out FILE``: three processes, as
a delivery crosses them — a producer ``PUBLISH``es (paced at ``rate`` per second, the timestamp
taken just before the call, as ``bench.producer`` does before ``submit``), a subscriber process
reads the message and forwards it as one WebSocket text frame (redis-py asyncio pub/sub and a
``websockets`` client, as a pod reads its bell and writes a `job` frame), and a receiver process
(a ``websockets`` server, as a runner) takes the time it arrives. Per message: arrival - stamp,
on ``time.perf_counter`` (CLOCK_MONOTONIC: one clock for every process of the machine).

What it shows: at a low rate every process sleeps between messages and each hop pays the wake-up
of a sleeping process (on a virtual machine, ~0.1-0.3 ms each), so the same chain is ~3x slower at
10 or 100 messages/s than back to back. The dispatcher's submit → `job` latency at a given rate is
compared against this chain at the same rate (``bench.floor``); the difference is what the
dispatcher adds: the submit function's matching in Redis and the pod's and runner's Python.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

CHANNEL = "bench:chainfloor"
START_TIMEOUT = 30.0


def _receiver(port: int, count: int, queue: Any) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def main() -> None:
        arrivals: list[float] = []
        done = asyncio.Event()

        async def handler(ws: ServerConnection) -> None:
            async for message in ws:
                arrivals.append(time.perf_counter() - float(message))
                if len(arrivals) >= count:
                    done.set()

        async with serve(handler, "127.0.0.1", port, compression=None):
            queue.put("listening")
            await done.wait()
        queue.put(arrivals)

    asyncio.run(main())


def _forwarder(redis_url: str, port: int, queue: Any) -> None:
    from websockets.asyncio.client import connect

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        pubsub = client.pubsub()
        await pubsub.subscribe(CHANNEL)
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            queue.put("subscribed")
            async for message in pubsub.listen():
                if message["type"] == "message":
                    await ws.send(message["data"].decode())

    asyncio.run(main())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(redis_url: str, rate: float, count: int) -> dict[str, Any]:
    """Publish ``count`` messages at ``rate``/s through the chain; the latencies, summarised."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    receiver = ctx.Process(target=_receiver, args=(port, count, queue), daemon=True)
    receiver.start()
    forwarder = None
    try:
        assert queue.get(timeout=START_TIMEOUT) == "listening"
        forwarder = ctx.Process(target=_forwarder, args=(redis_url, port, queue), daemon=True)
        forwarder.start()
        assert queue.get(timeout=START_TIMEOUT) == "subscribed"
        time.sleep(0.3)
        client = redis.Redis.from_url(redis_url)
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            client.publish(CHANNEL, repr(time.perf_counter()))
        client.close()
        latencies = sorted(queue.get(timeout=START_TIMEOUT + count / rate))
    finally:
        for proc in (forwarder, receiver):
            if proc is not None and proc.is_alive():
                proc.terminate()
                proc.join(5)

    def pct(q: float) -> float:
        return round(float(latencies[min(len(latencies) - 1, int(q * len(latencies)))]) * 1e3, 3)

    return {"rate": rate, "count": len(latencies), "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.chainfloor", description=__doc__)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--rate", type=float, required=True, help="messages per second")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = p.parse_args()
    if args.rate <= 0 or args.count <= 0:
        p.error("--rate and --count must be > 0")
    args.out.write_text(json.dumps(measure(args.redis_url, args.rate, args.count)))


if __name__ == "__main__":
    main()
