"""How the dispatcher's processes connect to Redis: one place for URLs, timeouts and keepalive.

Every client is built here from a URL ``dispatcher.redisurl`` parses: one server (``redis://``,
``rediss://``), a Sentinel-managed primary (``redis+sentinel://``: redis-py's ``Sentinel``, whose
pools find the new primary after a promotion) or a Redis Cluster (``redis+cluster://``:
``RedisCluster``, which routes each call by its declared keys; ``dispatcher.clusterclients``
makes it read an ``FCALL``'s keys itself instead of asking a node with ``COMMAND GETKEYS`` twice
a call, and queue a burst past ``max_connections`` as the single-server pool does). Pub/sub is
sharded (SSUBSCRIBE): on a cluster, the subscription connects to the node serving the channel's
slot.

Every command connection gets a socket timeout, so a half-open TCP connection (a Redis host that
vanished, a NAT that forgot the flow) fails a command within seconds instead of stalling the pod's
tick until its presence lapses; TCP keepalive finds dead peers on idle connections too. Pub/sub
connections get keepalive but no read timeout (they wait for messages by design); the pod's
doorbell probe finds a subscription that died silently.
"""

from __future__ import annotations

import weakref
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from dispatcher import clusterclients, redisurl

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


def _target_options(target: redisurl.RedisTarget) -> dict[str, Any]:
    """Credentials and TLS of a sentinel or cluster URL, for its data connections."""
    options: dict[str, Any] = {}
    if target.username:
        options["username"] = target.username
    if target.password is not None:
        options["password"] = target.password
    if target.tls:
        options["ssl"] = True
    return options


def _sentinel_kwargs(target: redisurl.RedisTarget) -> dict[str, Any]:
    """How to talk to the Sentinels themselves (their own password, if any)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": CONNECT_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
    }
    if "sentinel_password" in target.options:
        kwargs["password"] = target.options["sentinel_password"]
    return kwargs


def _cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    # a cluster client retries and re-routes on its own (MOVED, failover): no per-connection retry
    return {k: v for k, v in options.items() if k not in ("retry", "health_check_interval")}


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client for commands (not for pub/sub or rq's blocking pops) on any URL
    ``redisurl`` accepts. On a cluster it is a ``redis.RedisCluster`` (typed as ``redis.Redis``:
    the commands this package uses exist on both; rq needs a real ``redis.Redis``)."""
    target = redisurl.parse(url)
    settings = {**_COMMAND_OPTIONS, "retry": _retry_once(), **options}
    if target.sentinel:
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts), sentinel_kwargs=_sentinel_kwargs(target)
        )
        settings |= _target_options(target)
        primary: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.service, db=target.db, **settings
        )
        return primary
    if target.cluster:
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in target.hosts]  # type: ignore[no-untyped-call]
        settings = _cluster_options(settings | _target_options(target))
        return cast(redis.Redis, clusterclients.RedisCluster(startup_nodes=nodes, **settings))
    return redis.Redis.from_url(url, **settings)


def async_client(
    url: str, max_connections: int, timeout: float | None, **options: Any
) -> redis.asyncio.Redis:
    """An asyncio client for commands: a burst queues for a connection (``timeout`` s) instead of
    failing past ``max_connections`` (on a single server a blocking pool). On Sentinel, the
    current primary's pool (it follows a promotion); on a cluster a ``RedisCluster`` (typed as
    ``redis.asyncio.Redis``)."""
    target = redisurl.parse(url)
    settings = {**_COMMAND_OPTIONS, "retry": _async_retry_once(), **options}
    if target.sentinel:
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts), sentinel_kwargs=_sentinel_kwargs(target)
        )
        settings |= _target_options(target)
        client: redis.asyncio.Redis = sentinel.master_for(
            target.service, db=target.db, max_connections=max_connections, **settings
        )
        return client
    if target.cluster:
        nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in target.hosts]
        settings = _cluster_options(settings | _target_options(target))
        cluster = clusterclients.AsyncRedisCluster(
            startup_nodes=nodes, max_connections=max_connections, queue_timeout=timeout, **settings
        )
        return cast(redis.asyncio.Redis, cluster)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **settings
    )
    return redis.asyncio.Redis.from_pool(pool)


def async_pool(url: str, max_connections: int, timeout: float, **options: Any) -> Any:
    """A blocking asyncio pool of one server (``async_client`` takes any URL)."""
    settings = {**_COMMAND_OPTIONS, "retry": _async_retry_once(), **options}
    return redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **settings
    )


_PUBSUB_OPTIONS: dict[str, Any] = {
    "socket_keepalive": True,
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "health_check_interval": 0,
}


async def async_pubsub_client(url: str, channel: str) -> redis.asyncio.Redis:
    """An asyncio client for one (sharded) subscription to ``channel``: keepalive, no read
    timeout. On a cluster, a client of the node serving the channel's slot now (resolved afresh
    on every call, so a caller that reconnects after an error follows a failover)."""
    target = redisurl.parse(url)
    if target.sentinel:
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts), sentinel_kwargs=_sentinel_kwargs(target)
        )
        options = _PUBSUB_OPTIONS | _target_options(target)
        primary: redis.asyncio.Redis = sentinel.master_for(target.service, db=target.db, **options)
        return primary
    if target.cluster:
        nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in target.hosts]
        cluster = redis.asyncio.RedisCluster(
            startup_nodes=nodes,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            **_target_options(target),
        )
        try:
            await cluster.initialize()
            node = cluster.get_node_from_key(channel)
        finally:
            await cluster.aclose()
        if node is None:
            raise redis.ConnectionError(f"no node serves the slot of {channel}")
        return redis.asyncio.Redis(
            host=str(node.host), port=int(node.port), **_PUBSUB_OPTIONS, **_target_options(target)
        )
    return redis.asyncio.Redis.from_url(url, **_PUBSUB_OPTIONS)


async def async_pubsub(client: redis.asyncio.Redis, channel: str) -> redis.asyncio.client.PubSub:
    """A pub/sub object of ``client`` able to SSUBSCRIBE ``channel``: on a cluster client, one on
    the node serving the channel's slot (with the client's connection settings)."""
    if isinstance(client, redis.asyncio.RedisCluster):
        await client.initialize()
        node = client.get_node_from_key(channel)
        if node is None:
            raise redis.ConnectionError(f"no node serves the slot of {channel}")
        pool = redis.asyncio.ConnectionPool(
            connection_class=node.connection_class, **node.connection_kwargs
        )
        return redis.asyncio.Redis(connection_pool=pool).pubsub()
    return client.pubsub()


_NODE_CLIENTS: weakref.WeakKeyDictionary[Any, dict[str, redis.asyncio.Redis]] = (
    weakref.WeakKeyDictionary()
)


async def same_node(client: redis.asyncio.Redis, key: str) -> redis.asyncio.Redis:
    """A client whose pipeline runs on one connection of the server holding ``key``: ``client``
    itself, or on a cluster a plain client of the node serving the key's slot now (one per node,
    kept for the cluster client's life). For WAIT/WAITAOF after a write, which count the writes
    of their own connection: a cluster pipeline sends the keyless WAIT to its default node."""
    if not isinstance(client, redis.asyncio.RedisCluster):
        return client
    await client.initialize()
    node = client.get_node_from_key(key)
    if node is None:
        raise redis.ConnectionError(f"no node serves the slot of {key}")
    clients = _NODE_CLIENTS.setdefault(client, {})
    if node.name not in clients:
        pool = redis.asyncio.ConnectionPool(
            connection_class=node.connection_class, **node.connection_kwargs
        )
        clients[node.name] = redis.asyncio.Redis(connection_pool=pool)
    return clients[node.name]


def sync_pubsub(client: redis.Redis, channel: str) -> redis.client.PubSub:
    """The blocking counterpart of ``async_pubsub``."""
    if isinstance(client, redis.RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(channel)).pubsub()
    pubsub: redis.client.PubSub = client.pubsub()  # type: ignore[no-untyped-call]
    return pubsub
