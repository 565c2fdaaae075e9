"""The pod fixtures of tests/dispatcher (real pods in this process) for the deploy checks."""

from tests.dispatcher.conftest import launch

__all__ = ["launch"]
