"""One frozen settings object, built once from the environment (flags may override).

No other module reads ``os.environ``: settings are passed explicitly.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from dispatcher import redisurl
from dispatcher.durability import Durability
from dispatcher.errors import ConfigError
from dispatcher.forwarded import Network, parse_trusted

# a plain name, or a hash-tagged one ('{name}': every key of the namespace in one cluster slot)
NAMESPACE_RE = re.compile(r"^(?:[A-Za-z0-9_-]{1,64}|\{[A-Za-z0-9_-]{1,62}\})$")
SINKS = ("postgres", "webhook")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of the dispatcher; times are seconds and may be fractional."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "dispatch"
    # the rq queues of result batches on their own Redis (standalone or Sentinel); required when
    # redis_url is a cluster (rq cannot run on Redis Cluster: docs/operations.md#redis-cluster)
    results_redis_url: str = ""
    start_timeout: float = 15.0
    lease_timeout: float = 30.0
    heartbeat_interval: float = 5.0
    timeout_grace: float = 60.0
    reconcile_interval: float = 1.0
    max_message_bytes: int = 4 * 1024 * 1024
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    connect_rate: int = 60
    wake: str = "pubsub"
    poll_interval: float = 1.0
    pod_ttl: float = 15.0
    job_retention: float = 7 * 24 * 3600
    usage_retention_days: int = 400  # per-day usage hashes (dispatcher.usage); 0 = kept
    linger: float = 5.0
    # the limit of a concurrency group that has none of its own (dispatcher.groups); 0 = unlimited
    group_default_limit: int = 0
    ws_compression: bool = False
    # what one job's live log may store (protocol 1.1 `log`); past it chunks are dropped, counted
    log_max_bytes: int = 16 * 1024 * 1024
    # bytes/s of `log` data one connection may send before the pod reads it more slowly (0: any)
    log_rate: int = 1024 * 1024
    # -- results path (outbox -> rq batches -> writers -> sinks)
    result_batch_size: int = 256
    outbox_visibility: float = 10.0
    sinks: str = ""
    postgres_url: str = ""
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_timeout: float = 5.0
    sink_retry: str = "1,5,30,120,300"
    ack_durability: str = "memory"
    ack_wait_timeout: float = 2.0

    # -- the handshake (docs/security.md)
    handshake_timeout: float = 10.0
    max_head_line: int = 8192
    max_head_bytes: int = 16384
    max_headers: int = 64
    max_pending_handshakes: int = 1024
    auth_fail_rate: int = 30
    trusted_proxies: str = ""

    # -- operators' side: /metrics listener, dashboard (deploy/, docs/operations.md#metrics)
    admin_port: int = 0
    admin_host: str = "127.0.0.1"
    dashboard_token: str = ""

    def __post_init__(self) -> None:
        if not NAMESPACE_RE.match(self.namespace):
            raise ConfigError(
                f"namespace {self.namespace!r} must be 1-64 characters of A-Z a-z 0-9 _ -, "
                "or such a name in braces ('{name}', a hash tag)"
            )
        target = redisurl.parse(self.redis_url)
        results = redisurl.parse(self.results_redis_url) if self.results_redis_url else None
        if target.cluster and not self.namespace.startswith("{"):
            raise ConfigError(
                f"on a Redis Cluster the namespace must be hash-tagged: "
                f"DISPATCHER_NAMESPACE={{{self.namespace}}}"
            )
        if target.cluster and results is None:
            raise ConfigError(
                "on a Redis Cluster the rq result queues need their own Redis: set "
                "DISPATCHER_RESULTS_REDIS_URL (redis:// or redis+sentinel://)"
            )
        if results is not None and results.cluster:
            raise ConfigError(
                "DISPATCHER_RESULTS_REDIS_URL cannot be a cluster (rq needs one node)"
            )
        for name in (
            "start_timeout",
            "lease_timeout",
            "heartbeat_interval",
            "reconcile_interval",
            "ping_interval",
            "ping_timeout",
            "poll_interval",
            "pod_ttl",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.pod_ttl < 3 * self.reconcile_interval:
            raise ConfigError("pod_ttl must be at least 3 x reconcile_interval")
        if self.timeout_grace < 0 or self.job_retention < 0 or self.linger < 0:
            raise ConfigError("timeout_grace, job_retention and linger must be >= 0")
        if self.group_default_limit < 0:
            raise ConfigError("group_default_limit must be >= 0 (0 = unlimited)")
        if self.usage_retention_days < 0:
            raise ConfigError("usage_retention_days must be >= 0 (0 = kept)")
        if self.max_message_bytes < 1024:
            raise ConfigError("max_message_bytes must be >= 1024")
        if self.log_max_bytes < 0 or self.log_rate < 0:
            raise ConfigError("log_max_bytes and log_rate must be >= 0")
        if self.connect_rate < 1:
            raise ConfigError("connect_rate must be >= 1")
        if self.wake not in ("pubsub", "poll"):
            raise ConfigError("wake must be 'pubsub' or 'poll'")
        self._check_results_path()
        self._check_handshake()
        if not 0 <= self.admin_port <= 65535:
            raise ConfigError("admin_port must be from 0 (off) to 65535")

    def _check_results_path(self) -> None:
        if not 1 <= self.result_batch_size <= 4096:
            raise ConfigError("result_batch_size must be from 1 to 4096")
        if self.outbox_visibility <= 0 or self.webhook_timeout <= 0:
            raise ConfigError("outbox_visibility and webhook_timeout must be > 0")
        unknown = set(self.sink_names) - set(SINKS)
        if unknown:
            raise ConfigError(
                f"DISPATCHER_SINKS: unknown sink {sorted(unknown)[0]!r} (known: {', '.join(SINKS)})"
            )
        self.sink_retry_intervals  # noqa: B018 (validates)
        Durability.parse(self.ack_durability)
        if self.ack_wait_timeout <= 0:
            raise ConfigError("ack_wait_timeout must be > 0")

    @property
    def sink_names(self) -> list[str]:
        """``sinks`` as a list, in order, without blanks or repeats."""
        names = [s.strip() for s in self.sinks.split(",") if s.strip()]
        return list(dict.fromkeys(names))

    @property
    def sink_retry_intervals(self) -> tuple[int, ...]:
        """``sink_retry`` as seconds between a sink batch's tries (rq Retry intervals)."""
        try:
            values = tuple(int(v) for v in self.sink_retry.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or any(v < 0 for v in values):
            raise ConfigError(
                f"DISPATCHER_SINK_RETRY={self.sink_retry!r}: comma-separated whole seconds >= 0"
            )
        return values

    def _check_handshake(self) -> None:
        if self.handshake_timeout <= 0:
            raise ConfigError("handshake_timeout must be > 0")
        # 8192 and 128: the websockets parser behind the guard refuses anything longer anyway
        if not 256 <= self.max_head_line <= 8192:
            raise ConfigError("max_head_line must be from 256 to 8192")
        if not self.max_head_line <= self.max_head_bytes <= 1024 * 1024:
            raise ConfigError("max_head_bytes must be from max_head_line to 1 MiB")
        if not 8 <= self.max_headers <= 128:
            raise ConfigError("max_headers must be from 8 to 128")
        if self.max_pending_handshakes < 1 or self.auth_fail_rate < 0:
            raise ConfigError("max_pending_handshakes must be >= 1 and auth_fail_rate >= 0")
        self.trusted_proxy_networks  # noqa: B018 (validates)

    @property
    def trusted_proxy_networks(self) -> tuple[Network, ...]:
        """``trusted_proxies`` parsed: the peers whose ``X-Forwarded-For`` is believed."""
        try:
            return parse_trusted(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"DISPATCHER_TRUSTED_PROXIES: {exc}") from None

    @property
    def rq_redis_url(self) -> str:
        """Where the rq queues of result batches live."""
        return self.results_redis_url or self.redis_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``DISPATCHER_*`` variables; keyword overrides (flags) win when not None."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = source.get(f"DISPATCHER_{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = _convert(field.name, raw, field.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _convert(name: str, raw: str, type_name: Any) -> Any:
    if type_name in ("bool", bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"DISPATCHER_{name.upper()}={raw!r} is not a boolean (on/off)")
    try:
        if type_name in ("float", float):
            return float(raw)
        if type_name in ("int", int):
            return int(raw)
    except ValueError:
        raise ConfigError(f"DISPATCHER_{name.upper()}={raw!r} is not a number") from None
    return raw
