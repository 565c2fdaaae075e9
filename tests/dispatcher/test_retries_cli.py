"""The CLI side of issue 12 part B: `submit --retries/--retry-delay`, the attempt history in
`dispatcher job`, `runner add --ephemeral`; bad input is one line on stderr, a non-zero status and
nothing written."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from dispatcher import functions
from dispatcher.cli import main
from dispatcher.keys import Keys

SPEC = "linux"


class Cli:
    def __init__(self, redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.base = ["--redis-url", redis_url, "--namespace", namespace]
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        try:
            code = main([*self.base, *args])
        except SystemExit as exited:  # argparse's usage errors
            code = int(exited.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        at = args.index("--") if "--" in args else len(args)  # options go before the command
        code, out, err = self(*args[:at], "--json", *args[at:])
        assert code == 0, err
        return json.loads(out.splitlines()[-1])


@pytest.fixture
def cli(redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(redis_url, namespace, capsys)


def namespace_keys(rclient: redis.Redis, keys: Keys) -> list[str]:
    return sorted(rclient.scan_iter(match=f"{keys.namespace}:*", count=1000))


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


def run_and_fail(rclient: redis.Redis, keys: Keys, runner: str, job_id: str, attempt: int) -> None:
    """A runner's attempt that ends `failed` with exit code 3, through the pod's functions."""
    run = lambda call: functions.run_sync(rclient, call)  # noqa: E731
    conn = run(functions.attach(keys, runner, "pod-a"))["conn"]
    assert run(functions.ready(keys, runner, conn, "", "try"))["job"] == job_id
    run(functions.start(keys, runner, job_id, attempt))
    run(
        functions.finish(
            keys,
            runner,
            job_id,
            attempt,
            "failed",
            exit_code=3,
            results=None,
            stdout=None,
            stderr=None,
            error="exit code 3",
        )
    )


def test_submit_takes_retry_options_and_job_shows_the_history(cli: Cli, rclient, keys) -> None:
    functions.run_sync(rclient, functions.tick(keys, "pod-a", 60_000))
    cli.json("runner", "add", "r1", "--spec", SPEC)
    job_id = cli.json("submit", "--spec", SPEC, "--retries", "2", "--retry-delay", "0", "--", "x")[
        "id"
    ]
    run_and_fail(rclient, keys, "r1", job_id, 1)
    record = cli.json("job", job_id[:8])
    assert (record["status"], record["retries"], record["retries_used"]) == ("pending", 2, 1)
    assert [
        (a["attempt"], a["status"], a["exit_code"], a["retried"]) for a in record["attempts"]
    ] == [(1, "failed", 3, True)]
    code, out, _err = cli("job", job_id[:8])
    assert code == 0
    assert "retries   1 of 2 used" in out
    assert "#1 r1 failed exit 3 (retried): exit code 3" in out


def test_submit_keeps_a_fractional_retry_delay(cli: Cli) -> None:
    job_id = cli.json(
        "submit", "--spec", SPEC, "--retries", "1", "--retry-delay", "2.5", "--", "x"
    )["id"]
    record = cli.json("job", job_id)
    assert (record["retries"], record["retry_delay"], record["attempts"]) == (1, 2.5, [])


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--retries", "-1"], 1, "retries must be from 0 to 100"),
        (["--retries", "101"], 1, "retries must be from 0 to 100"),
        (["--retry-delay", "-1"], 1, "retry_delay must be from 0 to 86400"),
        (["--retry-delay", "nan"], 1, "retry_delay must be from 0 to 86400"),
        (["--retries", "two"], 2, "invalid int value"),
        (["--retry-delay", "soon"], 2, "invalid float value"),
    ],
)
def test_submit_refuses_bad_retry_options_in_one_line(
    cli: Cli, rclient, keys, args: list[str], status: int, message: str
) -> None:
    code, out, err = cli("submit", "--spec", SPEC, *args, "--", "true")
    assert code == status and out == ""
    assert message in err
    if status == 1:
        assert one_line(err), err
    assert namespace_keys(rclient, keys) == []


def test_runner_add_ephemeral(cli: Cli, rclient, keys) -> None:
    added = cli.json("runner", "add", "vm-1", "--spec", SPEC, "--ephemeral")
    assert (added["name"], added["ephemeral"]) == ("vm-1", True)
    assert len(added["token"]) > 20
    plain = cli.json("runner", "add", "r1", "--spec", SPEC)
    assert plain["ephemeral"] is False
    listed = {r["name"]: r["ephemeral"] for r in cli.json("runner", "list")}
    assert listed == {"vm-1": True, "r1": False}
    code, out, _err = cli("runner", "add", "vm-2", "--spec", SPEC, "--ephemeral")
    assert code == 0 and "ephemeral: one job" in out


@pytest.mark.parametrize(
    "args",
    [
        ["bad/name", "--spec", SPEC, "--ephemeral"],
        ["vm-1", "--spec", "bad spec", "--ephemeral"],
    ],
)
def test_runner_add_ephemeral_refuses_bad_input_in_one_line(
    cli: Cli, rclient, keys, args: list[str]
) -> None:
    code, out, err = cli("runner", "add", *args)
    assert code == 1 and out == "" and one_line(err), err
    assert namespace_keys(rclient, keys) == []
