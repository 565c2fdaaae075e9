"""deploy/Dockerfile's structure (no Docker daemon here): stages, pinned base, non-root user, no
build tools or package installs in the final stage, entry points that exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev|libpq-dev|apt-get|apk|pip)\b"
)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions(DOCKERFILE.read_text()):
        if word == "FROM":
            result.append([])
        assert result, "an instruction before the first FROM"
        result[-1].append((word, rest))
    return result


def test_multi_stage_with_a_pinned_base() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    for stage in all_stages:
        image = stage[0][1].split()[0]
        # an exact tag (major.minor.patch) or a digest: never `latest` or a moving `3.11`
        assert "@sha256:" in image or re.search(r":\d+\.\d+\.\d+", image), image
    names = [s[0][1].split()[-1] for s in all_stages[:-1]]
    final = all_stages[-1]
    copies = [rest for word, rest in final if word == "COPY"]
    assert any(c.startswith(f"--from={names[0]} ") for c in copies), "final stage copies the build"


def test_final_stage_runs_as_a_user_and_has_no_build_tools() -> None:
    final = stages()[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage must switch to an unprivileged user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    for word, rest in final:
        if word == "RUN":
            assert not BUILD_TOOLS.search(rest), f"final stage installs or builds: {rest}"


def test_entry_points_exist() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    text = DOCKERFILE.read_text()
    for name in ("dispatcher", "worker-bridge", "dispatch-runner"):
        assert name in scripts
        assert name in text  # the build stage checks each one runs
    cmd = [rest for word, rest in stages()[-1] if word == "CMD"]
    assert cmd and cmd[-1].startswith('["dispatcher", "serve"')
    # the build copies the repository; the ignore file must not hide a package or pyproject
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [p.rstrip("*") for p in find["packages"]["find"]["include"]]
    assert packages
    for name in [*packages, "pyproject.toml", "README.md"]:
        assert name not in ignored, name
    assert "tests" in ignored and ".git" in ignored and ".venv" in ignored
