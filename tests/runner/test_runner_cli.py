"""The dispatch-runner command: arguments, the token's secrecy, logging."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import build_parser, hide_secret, make_config
from runner.config import AgentConfig
from runner.logs import JsonFormatter, RedactFilter

ARGS = ["--url", "http://d:8080", "--runner", "r1"]


def config(argv: list[str], environ: dict[str, str] | None = None) -> AgentConfig:
    parser = build_parser()
    return make_config(parser, parser.parse_args(argv), environ or {})


def test_defaults() -> None:
    cfg = config([*ARGS, "--token", "t0k"])
    assert (cfg.token, cfg.poll_timeout, cfg.state_dir) == ("t0k", 30, Path(".dispatch-runner"))
    assert cfg.channel_urls == ("ws://d:8080/v1/runners/r1/channel",)
    assert cfg.job_dir == Path(".dispatch-runner/r1/work")


def test_token_from_the_environment_is_kept_from_the_jobs() -> None:
    cfg = config(ARGS, {"DISPATCH_RUNNER_TOKEN": "envtok", "HOME": "/h"})
    assert cfg.token == "envtok"
    assert dict(cfg.base_env) == {"HOME": "/h"}


def test_the_token_never_shows_in_repr() -> None:
    assert "s3cret" not in repr(config([*ARGS, "--token", "s3cret"]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (ARGS, "no token"),
        (["--url", "ftp://d", "--runner", "r", "--token", "t"], "http(s)://HOST:PORT"),
        ([*ARGS, "--token", "t", "--poll-timeout", "901"], "out of range"),
        ([*ARGS, "--token", "t", "--poll-timeout", "abc"], "invalid"),
        ([*ARGS, "--token", "t", "--drain-timeout", "-1"], "out of range"),
        ([*ARGS, "--token", "t", "--log-format", "xml"], "invalid choice"),
        (["--runner", "r", "--token", "t"], "--url"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        config(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_hide_secret_rewrites_sys_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dispatch-runner", "--token", "abc123", "--token=abc123"])
    hide_secret("abc123")
    assert sys.argv == ["dispatch-runner", "--token", "***", "--token=***"]


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_the_process_list_no_longer_shows_the_token() -> None:
    code = (
        "import sys; from runner.secrecy import scrub_memory; "
        "assert scrub_memory('tok-XYZ-987'); "
        "sys.stdout.buffer.write(open('/proc/self/cmdline', 'rb').read())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--token", "tok-XYZ-987"], capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert b"tok-XYZ-987" not in done.stdout and b"--token\x00***********" in done.stdout


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, message, args, None)


def test_secrets_are_scrubbed_from_log_records() -> None:
    entry = record("header %s sent", "Authorization: Bearer s3cret")
    assert RedactFilter(["s3cret"]).filter(entry)
    assert entry.getMessage() == "header Authorization: Bearer [redacted] sent"


def test_json_log_lines() -> None:
    line = json.loads(JsonFormatter().format(record("job %s done", "j1")))
    assert (line["level"], line["message"], line["logger"]) == ("info", "job j1 done", "t")
