"""Memory per idle runner connection on one pod: RSS delta / N, tracemalloc and object counts.

    python -m bench.connmem --runners 10000                 # one `dispatcher serve`-equivalent pod
    python -m bench.connmem --runners 2000 --tracemalloc 1  # + the top allocation sites per conn
    python -m bench.connmem --runners 2000 --ws websockets-sansio   # uvicorn's own protocol
    python -m bench.connmem --runners 2000 --server bare-asgi       # the layer alone (Starlette)
    python -m bench.connmem --runners 2000 --server bare-websockets # websockets' own server

A private redis-server is started (``--redis-url`` uses another). ``--server pod`` (default) runs
the pod exactly as ``dispatcher serve`` builds it (``dispatcher.server.build_server``) in a child
process, registers N runners, starts runner simulators (``bench.sim``: the reference agent's
connection options, one ``ready`` each, so every runner sits in its long poll) and waits until all
N are in the idle set. The two ``bare-*`` servers hold N connections that sent one text frame and
do nothing else: the cost of the WebSocket layer alone, for choosing it (``dispatcher.wsprotocol``).

The pod child reports, between a mark taken before the runners connect and the end: its RSS
(psutil, from here), the Python objects it holds by type (``gc``), and with ``--tracemalloc N``
the top allocation sites (N frames each). tracemalloc itself inflates RSS: compare RSS figures of
runs without it. ``--ws`` picks uvicorn's WebSocket protocol by its ``Config(ws=...)`` name for a
comparison (``dispatcher``: ours, the default). The result is printed as JSON and, with ``--out``,
written to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
import tracemalloc
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import redis.asyncio

from bench import metrics
from bench.cli import start_private_redis
from bench.common import SimRunner, say
from bench.harness import Harness
from bench.procs import Child, Procs, free_port, http_status

TOP = 25


# -- the server child ---------------------------------------------------------------------------


def _short(filename: str) -> str:
    return filename.split("site-packages/")[-1]


def _objects() -> Counter[str]:
    gc.collect()
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


async def _commands(frames: int) -> None:
    """Answer ``mark`` and ``report`` lines on stdin (a thread reads them)."""
    loop = asyncio.get_running_loop()
    marked: tuple[Counter[str], tracemalloc.Snapshot | None] | None = None
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "stop":
            return
        if line == "mark":
            snapshot = tracemalloc.take_snapshot() if frames else None
            marked = (_objects(), snapshot)
            say("marked")
        elif line.startswith("report") and marked is not None:
            per = max(1, int(line.split()[1]))
            objects = _objects() - marked[0]
            top_objects = [
                {"type": name, "per_conn": round(n / per, 2)}
                for name, n in objects.most_common(TOP)
            ]
            sites: list[dict[str, Any]] = []
            traced = 0.0
            if frames and marked[1] is not None:
                stats = tracemalloc.take_snapshot().compare_to(marked[1], "traceback")
                traced = sum(s.size_diff for s in stats) / per
                for stat in stats[:TOP]:
                    where = [
                        f"{f.filename.split('site-packages/')[-1]}:{f.lineno}"
                        for f in stat.traceback
                    ]
                    sites.append({"bytes_per_conn": round(stat.size_diff / per, 1), "at": where})
            say("report", objects=top_objects, sites=sites, traced_bytes_per_conn=round(traced, 1))


def serve_child(args: argparse.Namespace) -> None:
    if args.tracemalloc:
        tracemalloc.start(args.tracemalloc)
    if args.server == "bare-websockets":
        asyncio.run(_bare_websockets(args.port, args.tracemalloc))
        return
    import uvicorn

    if args.server == "bare-asgi":
        config = uvicorn.Config(_bare_app(), host="127.0.0.1", port=args.port, lifespan="off")
        server = uvicorn.Server(config)
    else:
        from dispatcher.server import build_server
        from dispatcher.settings import Settings

        server = build_server(Settings.from_env(), "127.0.0.1", args.port)
        config = server.config
    config.log_level = "warning"
    if args.ws != "dispatcher":
        config.ws = args.ws
    elif args.server == "bare-asgi":
        from dispatcher.wsprotocol import ChannelProtocol

        config.ws = ChannelProtocol
    config.ws_per_message_deflate = args.compression

    async def main() -> None:
        commands = asyncio.create_task(_commands(args.tracemalloc))
        serving = asyncio.create_task(server.serve())
        await asyncio.wait([commands, serving], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving

    # the loop `dispatcher serve` runs on (uvicorn's choice: uvloop when installed)
    factory = getattr(config, "get_loop_factory", lambda: None)()
    if factory is None:
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())


def _bare_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def hold(ws: WebSocket) -> None:
        await ws.accept()
        while (message := await ws.receive())["type"] != "websocket.disconnect":
            if message.get("text") == "sync":  # bench.wscpu: everything before it was read
                await ws.send_text("ok")

    async def readyz(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    return Starlette(
        routes=[Route("/readyz", readyz), WebSocketRoute("/v1/runners/{runner}/channel", hold)]
    )


async def _bare_websockets(port: int, frames: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.datastructures import Headers
    from websockets.http11 import Request, Response

    async def hold(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    def health(ws: ServerConnection, request: Request) -> Response | None:
        if request.path == "/readyz":
            return Response(200, "OK", Headers([("Content-Length", "3")]), b"ok\n")
        return None

    async with serve(hold, "127.0.0.1", port, process_request=health, compression=None):
        await _commands(frames)


# -- the measuring parent -----------------------------------------------------------------------


async def _until_ready(child: Child, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.returncode is not None:
            raise child.failure("exited during start-up")
        if await http_status(port, "/readyz") == 200:
            return
        await asyncio.sleep(0.1)
    raise child.failure(f"/readyz not 200 within {timeout:.0f} s")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    work_dir = Path(args.work_dir or f"bench/results/tmp/connmem-{time.strftime('%Y%m%d-%H%M%S')}")
    work_dir.mkdir(parents=True, exist_ok=True)
    procs = Procs(work_dir)
    try:
        redis_url = args.redis_url or await start_private_redis(procs)
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        h = Harness(
            redis_url=redis_url,
            run_ns=f"connmem-{uuid.uuid4().hex[:6]}",
            work_dir=work_dir,
            procs=procs,
            client=client,
            compression=not args.runner_no_compression,
        )
        ns = h.ns("pod")
        port = free_port()
        child_args = ["serve", "--port", str(port), "--server", args.server, "--ws", args.ws]
        child_args += ["--tracemalloc", str(args.tracemalloc)]
        if args.compression:
            child_args.append("--compression")
        env = h.env(ns, DISPATCHER_WS_COMPRESSION="on" if args.compression else "off")
        pod = await procs.python("pod", "bench.connmem", *child_args, env=env, pipes=True)
        await _until_ready(pod, port)
        url = f"ws://127.0.0.1:{port}/v1/runners/{{}}/channel"
        if args.server == "pod":
            from bench.harness import Pod

            runners = await h.register(ns, args.runners, [Pod(pod, port)])
        else:
            runners = [
                SimRunner(f"r{k:05d}", "x", url.format(f"r{k:05d}")) for k in range(args.runners)
            ]
        await asyncio.sleep(1.0)
        await pod.command("mark")
        await pod.event("marked", 120)
        rss_before = metrics.rss_bytes(pod.pid)
        sims = await h.start_sims(runners, args.per_process, poll_timeout=900, timeout=900)
        if args.server == "pod":
            await h.wait_idle(ns, sims.connected, "pubsub", timeout=600)
        await asyncio.sleep(args.settle)
        rss_after = metrics.rss_bytes(pod.pid)
        await pod.command(f"report {max(1, sims.connected)}")
        report = await pod.event("report", 600)
        await h.stop_sims(sims)
        await pod.command("stop")
        await procs.stop(pod, 15)
        if args.server == "pod" and not args.redis_url:
            pass  # the private Redis goes with its process
        elif args.server == "pod":
            await h.cleanup(ns)
        await client.aclose()
        per_conn = (rss_after - rss_before) / max(1, sims.connected)
        return {
            "server": args.server,
            "ws": args.ws,
            "compression": args.compression,
            "runner_offers_compression": not args.runner_no_compression,
            "runners": args.runners,
            "connected": sims.connected,
            "connect_errors": sims.errors,
            "rss_before_mib": round(rss_before / 2**20, 2),
            "rss_after_mib": round(rss_after / 2**20, 2),
            "rss_per_connection_kib": round(per_conn / 1024, 2),
            "tracemalloc_frames": args.tracemalloc,
            "traced_bytes_per_conn": report["traced_bytes_per_conn"],
            "objects_per_conn": report["objects"],
            "top_sites": report["sites"],
        }
    finally:
        await procs.stop_all()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.connmem", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command")
    child = sub.add_parser("serve", help="(internal) the server child")
    child.add_argument("--port", type=int, required=True)
    for parser in (p, child):
        parser.add_argument(
            "--server", choices=["pod", "bare-asgi", "bare-websockets"], default="pod"
        )
        parser.add_argument("--ws", default="dispatcher", help="uvicorn ws protocol (name)")
        parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES")
        parser.add_argument("--compression", action="store_true", help="server accepts deflate")
    p.add_argument("--runners", type=int, default=2000)
    p.add_argument("--per-process", type=int, default=2500, help="runners per simulator process")
    p.add_argument("--settle", type=float, default=3.0, help="seconds idle before the reading")
    p.add_argument("--redis-url", default="", help="default: a private redis-server")
    p.add_argument("--runner-no-compression", action="store_true", help="runners offer no deflate")
    p.add_argument("--work-dir", default="")
    p.add_argument("--out", default="", help="also write the JSON result here")
    args = p.parse_args(argv)
    if args.command == "serve":
        serve_child(args)
        return 0
    result = asyncio.run(measure(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
