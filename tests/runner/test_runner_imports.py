"""The runner installs without the server's dependencies: it must never import them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

FORBIDDEN = ("starlette", "uvicorn", "redis", "rq")

PROBE = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    FORBIDDEN = {forbidden!r}

    class Block:
        # First on sys.meta_path, so it sees every import before any real finder does.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ImportError(f"runner imported {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    import runner
    names = [m.name for m in pkgutil.walk_packages(runner.__path__, "runner.")]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    assert not leaked, leaked
    print(len(names))
    """
)


def test_every_runner_module_imports_without_server_dependencies() -> None:
    code = PROBE.format(forbidden=FORBIDDEN)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 12  # every module was walked, not just the package


def test_the_blocker_really_blocks() -> None:
    code = PROBE.format(forbidden=FORBIDDEN).replace("import runner\n", "import runner, redis\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "runner imported redis" in done.stderr
