"""Capture what the pod logs (uvicorn's loggers and the dispatcher's) in a test."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

POD_LOGGERS = ("uvicorn.error", "uvicorn.access", "dispatcher")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at_least(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextlib.contextmanager
def pod_logs() -> Iterator[Records]:
    """Every record of the pod's loggers at INFO and above (levels restored afterwards)."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in POD_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
