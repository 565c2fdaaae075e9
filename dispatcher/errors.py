"""The project's small exception tree; protocol errors know their WebSocket close code."""

from __future__ import annotations


class DispatchError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(DispatchError):
    """A setting has a value that cannot work."""


class InvalidInput(DispatchError):
    """A producer or operator passed a value that is refused (nothing was changed)."""


class NotFound(DispatchError, KeyError):
    """A job or runner that does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return str(self.args[0]) if self.args else "not found"


class ProtocolError(DispatchError):
    """A runner broke the channel protocol; the connection closes with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
