"""Sinks: where result writers put every final job besides Redis (DISPATCHER_SINKS).

A sink takes a batch of final job records and writes them idempotently (a batch may be written
twice: rq retries, a re-pumped batch). It reports partial progress by raising ``SinkFailure`` with
the number of leading records it delivered, so those are not sent again. Each sink has its own
box and rq queue, so a failing sink never holds back the Redis side or another sink.
"""

from __future__ import annotations

from typing import Protocol

from dispatcher.errors import ConfigError
from dispatcher.settings import Settings
from worker_bridge.sinks.records import JobRecord


class SinkFailure(Exception):
    """A batch was not fully written; ``delivered`` leading records were."""

    def __init__(self, message: str, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class Sink(Protocol):
    name: str

    def check(self) -> None:
        """Raise ``ConfigError`` (one line) when the sink cannot work as configured."""

    def write(self, jobs: list[JobRecord]) -> None:
        """Write every record, or raise ``SinkFailure``."""

    def close(self) -> None: ...


def build_sinks(settings: Settings) -> dict[str, Sink]:
    """The sinks ``settings`` name, constructed (not yet checked); ConfigError on missing URLs."""
    sinks: dict[str, Sink] = {}
    for name in settings.sink_names:
        if name == "postgres":
            from worker_bridge.sinks.postgres import PostgresSink

            if not settings.postgres_url:
                raise ConfigError(
                    "DISPATCHER_SINKS has postgres but DISPATCHER_POSTGRES_URL is unset"
                )
            sinks[name] = PostgresSink(settings.postgres_url)
        elif name == "webhook":
            from worker_bridge.sinks.webhook import WebhookSink

            if not settings.webhook_url:
                raise ConfigError(
                    "DISPATCHER_SINKS has webhook but DISPATCHER_WEBHOOK_URL is unset"
                )
            sinks[name] = WebhookSink(
                settings.webhook_url, settings.webhook_secret, settings.webhook_timeout
            )
    return sinks


__all__ = ["JobRecord", "Sink", "SinkFailure", "build_sinks"]
