"""The backends the scale-out scenarios run on: a local Redis Cluster and a Sentinel setup,
started as private processes once per session (skipped, with the reason, without redis-server)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dispatcher import redisconn
from dispatcher.settings import Settings
from tests.dispatcher.conftest import stop_pod
from tests.podkit import RunningPod, start_pod
from tests.scaleout.failover import Outcome, format_table
from tests.scaleout.servers import HAVE_REDIS, Servers, start_cluster, start_sentinel

SERVICE = "dispatch"


@dataclass(frozen=True)
class Backend:
    name: str
    redis_url: str  # DISPATCHER_REDIS_URL
    results_redis_url: str  # DISPATCHER_RESULTS_REDIS_URL ('' = the same Redis)
    tagged: bool  # whether namespaces must be hash-tagged

    def namespace(self) -> str:
        ns = "s" + uuid.uuid4().hex[:12]
        return "{" + ns + "}" if self.tagged else ns


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    if not HAVE_REDIS:
        pytest.skip("redis-server and redis-cli are not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="scaleout-") as root:
        running = Servers(Path(root))
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="session")
def cluster(servers: Servers) -> Backend:
    ports = start_cluster(servers)
    results = servers.redis_server("results")
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
    return Backend("cluster", f"redis+cluster://{seeds}", f"redis://127.0.0.1:{results}/0", True)


@pytest.fixture(scope="session")
def sentinel(servers: Servers) -> Backend:
    _, _, port = start_sentinel(servers, SERVICE)
    return Backend("sentinel", f"redis+sentinel://127.0.0.1:{port}/{SERVICE}/0", "", True)


@pytest.fixture(params=["cluster", "sentinel"])
def backend(request: pytest.FixtureRequest) -> Backend:
    value: Backend = request.getfixturevalue(request.param)
    return value


def backend_settings(backend: Backend, **overrides: Any) -> Settings:
    """A pod's settings on ``backend``: a fresh namespace, fast ticks, heartbeats and presence
    (``overrides`` change any of them)."""
    values: dict[str, Any] = {
        "redis_url": backend.redis_url,
        "results_redis_url": backend.results_redis_url,
        "namespace": backend.namespace(),
        "reconcile_interval": 0.1,
        "heartbeat_interval": 0.5,
        "ping_interval": 5,
        "ping_timeout": 5,
        "pod_ttl": 3,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return backend_settings(backend)


@pytest.fixture
def rclient(settings: Settings) -> Iterator[Any]:
    """A client of the backend's kind (cluster, sentinel), answers decoded."""
    client = redisconn.sync_client(settings.redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
async def pod(settings: Settings) -> AsyncIterator[RunningPod]:
    running = await start_pod(settings)
    yield running
    await stop_pod(running)


FAILOVERS: list[Outcome] = []


def record_failover(outcome: Outcome) -> None:
    """A row of the failover table shown at the end of the run (test_failover.py)."""
    FAILOVERS.append(outcome)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FAILOVERS:
        terminalreporter.section("Redis failover under load")
        terminalreporter.write_line(format_table(FAILOVERS))
