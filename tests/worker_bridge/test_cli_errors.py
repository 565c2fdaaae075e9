"""worker-bridge: bad input at start is one line and exit status 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BRIDGE = str(Path(sys.executable).parent / "worker-bridge")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redis-url", "notaurl"], "'notaurl' is not a Redis URL"),
        (["--redis-url", "redis://127.0.0.1:1/0", "--burst"], "Connection refused"),
    ],
)
def test_bad_redis_url_is_one_line(args: list[str], message: str) -> None:
    done = subprocess.run([BRIDGE, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("worker-bridge: ") and message in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
