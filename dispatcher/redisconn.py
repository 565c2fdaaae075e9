"""How the dispatcher's processes connect to Redis: one place for URLs, timeouts and keepalive.

Every command connection gets a socket timeout, so a half-open TCP connection (a Redis host that
vanished, a NAT that forgot the flow) fails a command within seconds instead of stalling the pod's
tick until its presence lapses; TCP keepalive finds dead peers on idle connections too. Pub/sub
connections get keepalive but no read timeout (they wait for messages by design); the pod's
doorbell probe finds a subscription that died silently.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

SOCKET_TIMEOUT = 10.0  # s: a command without a reply this long fails (then retried by its caller)
CONNECT_TIMEOUT = 5.0  # s to establish a connection
HEALTH_CHECK_INTERVAL = 30  # s idle before a connection is PINGed on its next use

# A pooled connection that died while idle (Redis restarted, CLIENT KILL, a proxy cut it) fails
# on its next use with a ConnectionError before the command reached Redis: that command is sent
# once more on a fresh connection. Only connection errors: a command that timed out may have run.
# (Every function is safe to see twice: fenced, compare-and-set, or idempotent by id.)
_COMMAND_OPTIONS: dict[str, Any] = {
    "socket_timeout": SOCKET_TIMEOUT,
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "socket_keepalive": True,
    "health_check_interval": HEALTH_CHECK_INTERVAL,
}


def _retry_once() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


def _async_retry_once() -> AsyncRetry:
    return AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client for commands (not for pub/sub or rq's blocking pops)."""
    return redis.Redis.from_url(url, **{**_COMMAND_OPTIONS, "retry": _retry_once(), **options})


def async_pool(url: str, max_connections: int, timeout: float, **options: Any) -> Any:
    """A blocking asyncio pool: a burst queues for a connection (``timeout`` s) instead of
    failing past ``max_connections``."""
    settings = {**_COMMAND_OPTIONS, "retry": _async_retry_once(), **options}
    return redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **settings
    )


def async_pubsub_client(url: str) -> redis.asyncio.Redis:
    """An asyncio client for one pub/sub subscription: keepalive, no read timeout."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_keepalive=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=0,
    )
