"""A real Prometheus (Debian's ``prometheus``) scrapes two real pods' admin ports, and the
series it stored are read back through its HTTP API (``/api/v1/query``).

Skipped, with the reason, when the ``prometheus`` binary is absent (``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dispatcher.test_podmetrics import free_port
from tests.podkit import add_runner, connect

PROMETHEUS = shutil.which("prometheus")
BOUND = 60.0  # s: the first scrapes of a fresh Prometheus on a loaded 2-core machine

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary (Debian's `prometheus` package provides it)"
)

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: dispatcher-pods
    static_configs:
      - targets: [{targets}]
"""


def start_prometheus(tmp_path: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """Prometheus on a free port, its config and TSDB in ``tmp_path`` (the caller kills it)."""
    config = tmp_path / "prometheus.yml"
    config.write_text(CONFIG.format(targets=", ".join(f"'{t}'" for t in targets)))
    port = free_port()
    assert PROMETHEUS is not None
    argv = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    if shutil.which("setpriv"):  # if pytest itself is killed, Prometheus goes with it
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


async def query(http: httpx.AsyncClient, port: int, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector ([] while Prometheus is not up yet)."""
    try:
        response = await http.get(
            f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}, timeout=5
        )
    except httpx.TransportError:
        return []
    if response.status_code != 200:
        return []
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def test_prometheus_scrapes_two_pods(launch, settings, rclient, keys, tmp_path, request):
    ports = [free_port(), free_port()]
    pods = [await launch(dataclasses.replace(settings, admin_port=p)) for p in ports]
    runners = [
        await connect(pod, name, add_runner(settings, name, ["linux"]))
        for pod, name in zip(pods, ("prom-a", "prom-b"), strict=True)
    ]
    proc, port = start_prometheus(tmp_path, [f"127.0.0.1:{p}" for p in ports])
    request.addfinalizer(lambda: stop(proc))

    started = time.monotonic()
    async with httpx.AsyncClient() as http:
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            up = await query(http, port, 'up{job="dispatcher-pods"} == 1')
            connections = await query(http, port, "dispatcher_connections")
            if len(up) == 2 and len(connections) == 2:
                break
            assert time.monotonic() - started < BOUND, (
                f"no series from both pods within {BOUND} s: up={up} connections={connections}"
            )
            await asyncio.sleep(0.25)
        by_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in connections}
        assert by_instance == {f"127.0.0.1:{p}": 1.0 for p in ports}
        total = await query(http, port, "sum(dispatcher_connections)")
        assert float(total[0]["value"][1]) == 2.0
        refused = await query(http, port, "dispatcher_handshakes_refused_total")
        assert {r["metric"]["reason"] for r in refused} >= {"unauthorized", "rate_limited"}
    for runner in runners:
        await runner.close()
