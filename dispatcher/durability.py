"""What a runner's `ack` promises (DISPATCHER_ACK_DURABILITY), and how the pod makes it true.

- ``memory`` (default): the outcome is in Redis's memory with its outbox entry (one atomic call).
  A Redis crash before its next AOF fsync or replication loses it; the runner, acknowledged,
  does not resend.
- ``replicas:N``: also on N replicas (``WAIT N``) before the `ack`; a failover to one of them keeps
  it.
- ``aof``: also fsynced to the primary's AOF (``WAITAOF 1 0``, Redis >= 7.2 or Valkey, with
  ``appendonly yes``) before the `ack`; a restart of that primary keeps it.

When the wait does not succeed in time the pod sends no `ack` and closes the channel (1011): the
runner keeps the result in its spool, reconnects and resends it, and the resend is a duplicate that
waits again. The wait runs on the same connection as the recording call (a pipeline), because both
commands count the writes of their own connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import redis
import redis.asyncio

from dispatcher.errors import ConfigError

_REPLICAS = re.compile(r"^replicas:([1-9][0-9]{0,2})$")


@dataclass(frozen=True, slots=True)
class Durability:
    mode: str  # 'memory' | 'replicas' | 'aof'
    replicas: int = 0

    @classmethod
    def parse(cls, text: str) -> Durability:
        if text == "memory":
            return cls("memory")
        if text == "aof":
            return cls("aof")
        match = _REPLICAS.match(text)
        if match:
            return cls("replicas", int(match.group(1)))
        raise ConfigError(
            f"DISPATCHER_ACK_DURABILITY={text!r}: one of memory, replicas:N (N >= 1), aof"
        )

    @property
    def waits(self) -> bool:
        return self.mode != "memory"

    def command(self, timeout_ms: int) -> tuple[str | int, ...]:
        """The command that waits for this durability on the connection that wrote."""
        if self.mode == "replicas":
            return ("WAIT", self.replicas, timeout_ms)
        return ("WAITAOF", 1, 0, timeout_ms)

    def satisfied(self, reply: object) -> bool:
        """Did the wait's reply reach the promise?"""
        if self.mode == "replicas":
            return isinstance(reply, int) and reply >= self.replicas
        return isinstance(reply, list) and len(reply) == 2 and int(reply[0]) >= 1

    async def check(self, client: redis.asyncio.Redis) -> None:
        """At pod start: ConfigError (one line) when the server cannot keep this promise."""
        if self.mode != "aof":
            return
        try:
            await client.execute_command("WAITAOF", 0, 0, 1)  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            raise ConfigError(
                "DISPATCHER_ACK_DURABILITY=aof needs WAITAOF (Redis >= 7.2 or Valkey) with "
                f"appendonly yes: the server said {str(exc).strip()!r}"
            ) from None
        config = await client.config_get("appendonly")
        values = {str(k.decode() if isinstance(k, bytes) else k): v for k, v in config.items()}
        enabled = values.get("appendonly")
        if (enabled.decode() if isinstance(enabled, bytes) else enabled) != "yes":
            raise ConfigError("DISPATCHER_ACK_DURABILITY=aof needs appendonly yes on the server")
