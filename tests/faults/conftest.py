"""Fixtures of the fault suite: one cluster of real processes for the whole module, the table.

``FAULTS_SIZE=soak`` (``make soak``) runs the same scenarios bigger and longer. The table is
written to ``table.txt`` in the run's directory as each row comes in, shown in every failing
assertion and printed in pytest's terminal summary (no ``-s`` needed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import Cluster, Size
from tests.faults.scenarios import Row, format_table

ROWS: list[Row] = []
TABLE: list[Path] = []


def size_name() -> str:
    return os.environ.get("FAULTS_SIZE", "ci")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    root = tmp_path_factory.mktemp("faults")
    TABLE.append(root / "table.txt")
    world = Cluster(root, Size.named(size_name()))
    try:
        world.start()
        yield world
    finally:
        world.close()


def table_text() -> str:
    size = Size.named(size_name())
    return format_table(
        ROWS, f"fault suite ({size_name()}: {size.agents} agents, 3 pods, 2 writers)"
    )


def record(row: Row) -> str:
    """Add ``row``; write the table so far to the run's table.txt; return it."""
    ROWS.append(row)
    text = table_text()
    if TABLE:
        TABLE[-1].write_text(text + "\n")
    return text


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.section("fault-injection table")
        terminalreporter.write_line(table_text())
        if TABLE:
            terminalreporter.write_line(f"(also in {TABLE[-1]})")
