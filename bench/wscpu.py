"""Server CPU per WebSocket message, per plain HTTP request and per handshake, back to back.

    python -m bench.wscpu --mode frames --messages 50000      # ours vs websockets-sansio
    python -m bench.wscpu --mode http --requests 5000         # GET /readyz, the pod
    python -m bench.wscpu --mode handshake --handshakes 1000  # accepted handshakes

The server runs in a child process (``python -m bench.connmem serve``); the clients run here, so
the child's CPU time (user + system, psutil) between two marks is the server's cost alone.

- ``frames``: the WebSocket layer alone (``--server bare-asgi``: Starlette holding the channel
  route, no Redis), once per ``--ws`` choice: ``dispatcher`` (``dispatcher.wsprotocol``) and
  uvicorn's ``websockets-sansio``. ``--clients`` connections each send their share of
  ``--messages`` heartbeat-sized text frames, then ``sync``, answered once all before it were read;
- ``http``: the pod as ``dispatcher serve`` builds it, ``--requests`` GET /readyz over
  ``--clients`` keep-alive connections (raw HTTP/1.1);
- ``handshake``: the pod, ``--handshakes`` runners registered, each connecting (the agent's
  options), then closing 1000.

Reported as CPU seconds per 1,000 (and the ratio between ``--ws`` choices for ``frames``). To
compare two versions of the server, run the same command in each checkout back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio
import websockets

from bench import deps
from bench.cli import start_private_redis
from bench.connmem import _until_ready
from bench.harness import Harness, Pod
from bench.procs import Child, Procs, free_port

HEARTBEAT = '{"event": "heartbeat", "job": "j-00000000", "attempt": 1}'


def cpu_seconds(pid: int) -> float:
    times = deps.psutil().Process(pid).cpu_times()
    return float(times.user + times.system)


async def _frames(url: str, clients: int, messages: int) -> None:
    async def one(k: int, count: int) -> None:
        async with websockets.connect(url.format(f"r{k:05d}"), compression=None) as ws:
            for _ in range(count):
                await ws.send(HEARTBEAT)
            await ws.send("sync")
            assert await ws.recv() == "ok"

    share = messages // clients
    await asyncio.gather(*(one(k, share) for k in range(clients)))


async def _http(port: int, clients: int, requests: int) -> None:
    request = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def one(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(one(requests // clients) for _ in range(clients)))


async def _handshakes(runners: list[Any], clients: int) -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for runner in runners:
        queue.put_nowait(runner)

    async def worker() -> None:
        while not queue.empty():
            runner = queue.get_nowait()
            headers = {"Authorization": f"Bearer {runner.token}"}
            async with websockets.connect(runner.url, additional_headers=headers) as ws:
                await ws.close()

    await asyncio.gather(*(worker() for _ in range(clients)))


async def _server(procs: Procs, h: Harness, server: str, ws: str) -> tuple[Child, int, str]:
    ns = h.ns(f"{server}-{ws}")
    port = free_port()
    args = ["serve", "--port", str(port), "--server", server, "--ws", ws]
    child = await procs.python(f"{server}-{ws}", "bench.connmem", *args, env=h.env(ns), pipes=True)
    await _until_ready(child, port)
    return child, port, ns


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work_dir = Path(args.work_dir or f"bench/results/tmp/wscpu-{time.strftime('%Y%m%d-%H%M%S')}")
    work_dir.mkdir(parents=True, exist_ok=True)
    procs = Procs(work_dir)
    results: list[dict[str, Any]] = []
    try:
        redis_url = args.redis_url or await start_private_redis(procs)
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        h = Harness(
            redis_url=redis_url,
            run_ns=f"wscpu-{uuid.uuid4().hex[:6]}",
            work_dir=work_dir,
            procs=procs,
            client=client,
            compression=False,
        )
        for ws in args.ws if args.mode == "frames" else ["dispatcher"]:
            server = "bare-asgi" if args.mode == "frames" else "pod"
            child, port, ns = await _server(procs, h, server, ws)
            url = f"ws://127.0.0.1:{port}/v1/runners/{{}}/channel"
            runners = (
                await h.register(ns, args.handshakes, [Pod(child, port)])
                if args.mode == "handshake"
                else []
            )
            count = {"frames": args.messages, "http": args.requests, "handshake": len(runners)}
            before = cpu_seconds(child.pid)
            started = time.perf_counter()
            if args.mode == "frames":
                await _frames(url, args.clients, args.messages)
            elif args.mode == "http":
                await _http(port, args.clients, args.requests)
            else:
                await _handshakes(runners, args.clients)
            wall = time.perf_counter() - started
            cpu = cpu_seconds(child.pid) - before
            n = count[args.mode]
            results.append(
                {
                    "server": server,
                    "ws": ws,
                    "count": n,
                    "cpu_s": round(cpu, 3),
                    "cpu_s_per_1000": round(cpu * 1000 / max(1, n), 4),
                    "wall_s": round(wall, 2),
                }
            )
            await procs.stop(child, 15)
        await client.aclose()
    finally:
        await procs.stop_all()
    out: dict[str, Any] = {"mode": args.mode, "clients": args.clients, "results": results}
    if len(results) == 2:
        out["ratio_second_to_first"] = round(
            results[1]["cpu_s_per_1000"] / max(1e-9, results[0]["cpu_s_per_1000"]), 2
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wscpu", description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["frames", "http", "handshake"], default="frames")
    p.add_argument("--ws", nargs="+", default=["dispatcher", "websockets-sansio"])
    p.add_argument("--messages", type=int, default=50000)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--handshakes", type=int, default=1000)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--redis-url", default="", help="default: a private redis-server")
    p.add_argument("--work-dir", default="")
    p.add_argument("--out", default="", help="also write the JSON result here")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
