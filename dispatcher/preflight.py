"""Is Redis there? One PING with short timeouts, before a command starts what needs Redis.

Without it, `dispatcher up` against an unreachable Redis waited 20 s for a pod that had died at
once, and `dispatcher serve` printed the application's start-up traceback. The answer is one line
that names the URL (its password hidden) and the cause.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dispatcher import redisconn
from dispatcher.errors import ConfigError, DispatchError

DEFAULT_TIMEOUT = 3.0


class RedisUnreachable(DispatchError):
    """Redis did not answer a PING (or the URL is not a Redis URL)."""


def shown_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: fit for a console or a log."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redis_problem(url: str, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """None when the Redis at ``url`` answers PING within ``timeout``, else the reason, one line."""
    try:
        client = redisconn.sync_client(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # one attempt: the caller reports at once
        )
    except ConfigError as exc:
        return str(exc)
    except ValueError as exc:
        return f"{shown_url(url)!r} is not a Redis URL ({exc})"
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        return f"Redis at {shown_url(url)} refused the credentials ({exc})"
    except (redis.RedisError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return f"cannot reach Redis at {shown_url(url)} ({reason})"
    finally:
        client.close()
    return None


def require_redis(url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Raise ``RedisUnreachable`` (one-line message) unless the Redis at ``url`` answers."""
    problem = redis_problem(url, timeout)
    if problem is not None:
        raise RedisUnreachable(problem)
