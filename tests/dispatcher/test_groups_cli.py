"""`dispatcher group set | list`, `submit --group`, `runner pause | resume`: in-process through
`main()`; every command has --json; bad input: one line on stderr, exit 1 or 2, no change."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatcher.cli import main
from dispatcher.keys import Keys
from tests.dispatcher.groupkit import RClient, connect, live_pod


class Cli:
    def __init__(self, redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.base = ["--redis-url", redis_url, "--namespace", namespace]
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        try:
            code = main([*self.base, *args])
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(redis_url, namespace, capsys)


def snapshot(rclient: RClient, keys: Keys) -> set[str]:
    return set(rclient.scan_iter(match=f"{keys.namespace}:*"))


def test_group_set_and_list(cli: Cli, rclient: RClient, keys: Keys) -> None:
    assert cli.json("group", "set", "org-42", "--limit", "2") == {
        "group": "org-42",
        "limit": 2,
        "inflight": 0,
        "released": 0,
    }
    code, out, _ = cli("submit", "--spec", "linux", "--group", "org-42", "--json", "--", "true")
    assert code == 0
    job = json.loads(out)["id"]
    assert rclient.hget(keys.job(job), "group") == "org-42"
    assert cli.json("group", "list") == [
        {
            "group": "org-42",
            "limit": 2,
            "inflight": 0,
            "pending": 1,
            "pending_by_spec": {"linux": 1},
        }
    ]
    code, out, _ = cli("group", "list")
    assert code == 0 and out.split("\n")[1].split() == ["org-42", "2", "0", "1"]
    assert cli.json("group", "set", "org-42", "--unlimited")["limit"] is None


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("group", "set", "a:b", "--limit", "1"), 1, "invalid group"),
        (("group", "set", "org", "--limit", "-1"), 1, "limit must be from 0"),
        (("group", "set", "org", "--limit", "x"), 2, "invalid int value"),
        (("group", "set", "org"), 2, "one of the arguments"),
        (("group", "set", "org", "--limit", "1", "--unlimited"), 2, "not allowed"),
        (("submit", "--spec", "linux", "--group", "no/slash", "--", "true"), 1, "invalid group"),
        (("runner", "pause", "ghost"), 1, "no such runner"),
        (("runner", "resume", "ghost", "--json"), 1, "no such runner"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    cli: Cli, rclient: RClient, keys: Keys, args: tuple[str, ...], code: int, message: str
) -> None:
    before = snapshot(rclient, keys)
    got, out, err = cli(*args)
    assert got == code and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert snapshot(rclient, keys) == before


def test_runner_pause_resume_and_list(cli: Cli, rclient: RClient, keys: Keys) -> None:
    live_pod(rclient, keys)
    connect(rclient, keys, "build-01")
    paused = cli.json("runner", "pause", "build-01")
    assert paused == {"name": "build-01", "paused": True, "changed": True, "job": None}
    assert [r["paused"] for r in cli.json("runner", "list")] == [True]
    code, out, _ = cli("runner", "list")
    assert code == 0 and "idle (paused)" in out
    code, out, _ = cli("runner", "resume", "build-01")
    assert (code, out.strip()) == (0, "runner build-01 resumed")
    assert [r["paused"] for r in cli.json("runner", "list")] == [False]
