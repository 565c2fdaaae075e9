"""HAProxy for the real-process tests: the example config of ``deploy/haproxy/haproxy.cfg``
rewritten for this run's ports (``render``, pure), and the runtime API's ``show stat`` read back
(``server_states``, ``frontend_sessions``).

``render`` changes only what must differ on a test box: the listening address, the server lines
(one per pod port), the stats socket's path, and the log target. Every timeout, retry, balance
and health-check setting is the example's own line, so the test exercises what users deploy.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
FRONTEND = "runners"
BACKEND = "pods"
HAVE_HAPROXY = shutil.which("haproxy") is not None


def server_name(index: int) -> str:
    """The name of the pod at ``index`` (0-based) in the backend: pod1, pod2, ..."""
    return f"pod{index + 1}"


def render(example: str, listen_port: int, pod_ports: list[int], stats_socket: Path) -> str:
    """``example`` with the listener on 127.0.0.1:``listen_port``, one server per pod port on
    127.0.0.1 and the runtime API on ``stats_socket``; every other line as it was."""
    out: list[str] = []
    servers_written = False
    for line in example.splitlines():
        words = line.split()
        first = words[0] if words else ""
        if first == "bind":
            line = f"    bind 127.0.0.1:{listen_port}"
        elif first == "stats" and words[1:2] == ["socket"]:
            line = f"    stats socket {stats_socket} mode 600 level admin"
        elif first == "server":
            if servers_written:
                continue
            servers_written = True
            out.extend(
                f"    server {server_name(i)} 127.0.0.1:{port} check"
                for i, port in enumerate(pod_ports)
            )
            continue
        out.append(line)
    if not servers_written:
        raise ValueError("the example config has no server line to replace")
    return "\n".join(out) + "\n"


def write_config(directory: Path, listen_port: int, pod_ports: list[int]) -> Path:
    """Render the example for these ports into ``directory``; returns the file's path."""
    path = directory / "haproxy.cfg"
    text = render(EXAMPLE.read_text(), listen_port, pod_ports, directory / "admin.sock")
    path.write_text(text)
    return path


def runtime_api(stats_socket: Path, command: str, timeout: float = 5.0) -> str:
    """One command on HAProxy's runtime API (the stats socket); its whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(stats_socket))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def parse_stat(csv_text: str) -> list[dict[str, str]]:
    """``show stat`` CSV (its header line starts with ``# ``) as one dict per row."""
    lines = [line for line in csv_text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        return []
    header = lines[0][2:].split(",")
    return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]


def server_states(stats_socket: Path) -> dict[str, str]:
    """Status of every pod server as HAProxy sees it: UP, DOWN, ``UP 1/2``, NOLB, MAINT ..."""
    rows = parse_stat(runtime_api(stats_socket, "show stat"))
    return {
        r["svname"]: r.get("status", "")
        for r in rows
        if r.get("pxname") == BACKEND and r.get("svname") not in ("FRONTEND", "BACKEND")
    }


def server_sessions(stats_socket: Path) -> dict[str, int]:
    """Open connections per pod server now (``scur``)."""
    rows = parse_stat(runtime_api(stats_socket, "show stat"))
    return {
        r["svname"]: int(r.get("scur") or 0)
        for r in rows
        if r.get("pxname") == BACKEND and r.get("svname") not in ("FRONTEND", "BACKEND")
    }


def retries(stats_socket: Path) -> dict[str, int]:
    """The backend's connection retries and redispatches so far (``wretr``, ``wredis``)."""
    rows = parse_stat(runtime_api(stats_socket, "show stat"))
    for row in rows:
        if row.get("pxname") == BACKEND and row.get("svname") == "BACKEND":
            return {
                "retries": int(row.get("wretr") or 0),
                "redispatches": int(row.get("wredis") or 0),
            }
    return {"retries": 0, "redispatches": 0}


class StateWatch:
    """Polls the pod servers' status every ``interval`` s in a thread and keeps every change as
    (time.time(), server, old status, new status): when HAProxy took a pod out, and put it back."""

    def __init__(self, stats_socket: Path, interval: float = 0.1) -> None:
        self.stats_socket = stats_socket
        self.interval = interval
        self.changes: list[tuple[float, str, str, str]] = []
        self._last: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                states = server_states(self.stats_socket)
            except OSError:
                continue
            now = time.time()
            for server, status in states.items():
                old = self._last.get(server, status)
                if status != old:
                    self.changes.append((now, server, old, status))
                self._last[server] = status
