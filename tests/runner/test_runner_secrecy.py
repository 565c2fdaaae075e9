"""runner.secrecy: the token out of /proc/PID/cmdline and environ, and a non-dumpable agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.secrecy import memory_areas

pytestmark = pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")

SECRET = "tok-SECRET-4711"


def test_memory_areas_are_read_from_the_stat_line() -> None:
    areas = memory_areas(Path("/proc/self/stat").read_text())
    (arg_start, arg_end), (env_start, env_end) = areas
    assert 0 < arg_start < arg_end <= env_start < env_end


def run_python(code: str, *argv: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DISPATCH_RUNNER_TOKEN": SECRET, "OTHER": f"x{SECRET}y"}
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


def test_the_token_is_overwritten_in_what_proc_shows_of_environ_and_cmdline() -> None:
    code = (
        "import sys; from runner.secrecy import scrub_memory; "
        f"assert scrub_memory({SECRET!r}); "
        "sys.stdout.buffer.write(open('/proc/self/environ', 'rb').read() + b'|' + "
        "open('/proc/self/cmdline', 'rb').read())"
    )
    out = run_python(code, "--token", SECRET).stdout
    assert SECRET.encode() not in out
    assert b"DISPATCH_RUNNER_TOKEN=" + b"*" * len(SECRET) in out
    assert b"OTHER=x" + b"*" * len(SECRET) + b"y" in out


def test_the_agent_process_is_not_dumpable() -> None:
    code = (
        "import ctypes, ctypes.util; from runner.secrecy import make_undumpable; "
        "libc = ctypes.CDLL(ctypes.util.find_library('c')); "
        "before = libc.prctl(3, 0, 0, 0, 0); ok = make_undumpable(); "
        "print(before, ok, libc.prctl(3, 0, 0, 0, 0))"
    )
    assert run_python(code).stdout.split() == [b"1", b"True", b"0"]


def test_the_command_hides_the_token_before_it_does_anything_else() -> None:
    code = (
        "import sys; from runner.cli import hide_secret; "
        f"hide_secret({SECRET!r}); "
        "import ctypes, ctypes.util; libc = ctypes.CDLL(ctypes.util.find_library('c')); "
        "print(libc.prctl(3, 0, 0, 0, 0), sys.argv[1:])"
    )
    out = run_python(code, "--token", SECRET).stdout.decode()
    assert out.split(maxsplit=1) == ["0", "['--token', '***']\n"]
