"""Redis pub/sub notification-driven job dispatcher for self-hosted CI runners."""

__version__ = "0.1.0"
