"""One frozen settings object, built once from the environment (flags may override).

No other module reads ``os.environ``: settings are passed explicitly.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from dispatcher.errors import ConfigError

NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of the dispatcher; times are seconds and may be fractional."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "dispatch"
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
    linger: float = 5.0
    ws_compression: bool = True

    def __post_init__(self) -> None:
        if not NAMESPACE_RE.match(self.namespace):
            raise ConfigError(
                f"namespace {self.namespace!r} must be 1-64 characters of A-Z a-z 0-9 _ -"
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
        if self.max_message_bytes < 1024:
            raise ConfigError("max_message_bytes must be >= 1024")
        if self.connect_rate < 1:
            raise ConfigError("connect_rate must be >= 1")
        if self.wake not in ("pubsub", "poll"):
            raise ConfigError("wake must be 'pubsub' or 'poll'")

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
