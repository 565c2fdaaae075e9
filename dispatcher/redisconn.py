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

SOCKET_TIMEOUT = 10.0  # s: a command without a reply this long fails (then retried by its caller)
CONNECT_TIMEOUT = 5.0  # s to establish a connection
HEALTH_CHECK_INTERVAL = 30  # s idle before a connection is PINGed on its next use

_COMMAND_OPTIONS: dict[str, Any] = {
    "socket_timeout": SOCKET_TIMEOUT,
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "socket_keepalive": True,
    "health_check_interval": HEALTH_CHECK_INTERVAL,
}


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client for commands (not for pub/sub or rq's blocking pops)."""
    return redis.Redis.from_url(url, **{**_COMMAND_OPTIONS, **options})


def async_pool(url: str, max_connections: int, timeout: float, **options: Any) -> Any:
    """A blocking asyncio pool: a burst queues for a connection (``timeout`` s) instead of
    failing past ``max_connections``."""
    return redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **{**_COMMAND_OPTIONS, **options}
    )


def async_pubsub_client(url: str) -> redis.asyncio.Redis:
    """An asyncio client for one pub/sub subscription: keepalive, no read timeout."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_keepalive=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=0,
    )
