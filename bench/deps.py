"""The harness's optional dependencies, imported on first use with an explicit error."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install psutil matplotlib  (the harness's extra dependencies)"


class MissingDependency(RuntimeError):
    """A package the harness needs is not installed."""


def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingDependency(
            f"the benchmark harness needs the '{name.split('.')[0]}' package: {INSTALL_HINT}"
        ) from exc


def psutil() -> ModuleType:
    return _load("psutil")


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    matplotlib = _load("matplotlib")
    matplotlib.use("Agg")
    return _load("matplotlib.pyplot")


def check() -> None:
    """Fail early, before any process starts, when a dependency is missing."""
    _load("psutil")
    _load("matplotlib")
