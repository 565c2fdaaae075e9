"""dispatch-runner with several dispatcher URLs: repeated --url or a comma-separated list; every
URL is checked at start and a bad one is one line on stderr with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import build_parser, make_config
from runner.config import AgentConfig, check_urls, split_urls

RUNNER = str(Path(sys.executable).parent / "dispatch-runner")


def config(*argv: str) -> AgentConfig:
    parser = build_parser()
    return make_config(parser, parser.parse_args([*argv, "--runner", "r1", "--token", "t"]), {})


def test_url_may_be_repeated() -> None:
    cfg = config("--url", "http://a:8000", "--url", "https://b:8443/prefix")
    assert cfg.urls == ("http://a:8000", "https://b:8443/prefix")
    assert cfg.channel_urls == (
        "ws://a:8000/v1/runners/r1/channel",
        "wss://b:8443/prefix/v1/runners/r1/channel",
    )


def test_url_may_be_a_comma_separated_list() -> None:
    cfg = config("--url", "http://a:8000, http://b:8000", "--url", "http://c:8000")
    assert cfg.urls == ("http://a:8000", "http://b:8000", "http://c:8000")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["http://a:1,"], "an empty dispatcher URL"),
        (["http://a:1", "ftp://b"], "http(s)://HOST:PORT, not 'ftp://b'"),
        (["http://a:1", "http://a:99999"], "not 'http://a:99999'"),
        (["http://a:1", "http://a:1/"], "given twice"),  # the same channel
    ],
)
def test_bad_url_lists_are_refused(values: list[str], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_urls(split_urls(values), "r1")
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        (["http://127.0.0.1:1", "nope"], "not 'nope'"),
        (["http://127.0.0.1:1", "http://127.0.0.1:x"], "not 'http://127.0.0.1:x'"),
        (["http://127.0.0.1:1,http://127.0.0.1:1"], "given twice"),
    ],
    ids=["no-scheme", "bad-port", "twice"],
)
def test_the_command_says_which_url_is_bad_in_one_line(
    tmp_path: Path, urls: list[str], message: str
) -> None:
    argv = [RUNNER, "--runner", "r1", "--state-dir", str(tmp_path)]
    for url in urls:
        argv += ["--url", url]
    env = {**os.environ, "DISPATCH_RUNNER_TOKEN": "tok-for-tests"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("dispatch-runner: error: ") and message in done.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was made


def test_help_shows_the_failover_example() -> None:
    done = subprocess.run([RUNNER, "--help"], capture_output=True, text=True, timeout=30)
    assert "--url http://pod-a.internal:8000 --url http://pod-b.internal:8000" in done.stdout
