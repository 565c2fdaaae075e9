"""The `dispatcher` command: in-process through `main()`, and as the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher.cli import main
from dispatcher.keys import Keys
from dispatcher.tokens import token_hash
from tests.jobflow import CONTRACT_FIELDS, SPEC, FakePod

DISPATCHER = str(Path(sys.executable).parent / "dispatcher")


class Cli:
    """Runs `dispatcher --redis-url … --namespace … ARGS` in-process."""

    def __init__(self, redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.base = ["--redis-url", redis_url, "--namespace", namespace]
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([*self.base, *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self(*args)
        # (a submit warns on stderr when no runner serves the spec: these tests register none)
        assert code == 0 and all(w.startswith("dispatcher: warning") for w in err.splitlines()), err
        return json.loads(out)


@pytest.fixture
def cli(redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(redis_url, namespace, capsys)


def job_hash(rclient: redis.Redis, keys: Keys, job_id: str) -> dict[Any, Any]:
    return rclient.hgetall(keys.job(job_id))


# -- submit ------------------------------------------------------------------------------------


def test_submit_prints_just_the_id(cli: Cli, rclient: redis.Redis, keys: Keys) -> None:
    code, out, err = cli("submit", "--spec", SPEC, "--", "true")
    assert code == 0 and err.startswith("dispatcher: warning: no runner")
    job_id = out.strip()
    assert uuid.UUID(job_id) and job_hash(rclient, keys, job_id)["status"] == "pending"


def test_submit_command_becomes_payload_command(cli: Cli) -> None:
    job_id = cli.json("submit", "--spec", SPEC, "--json", "--", "echo", "hi")["id"]
    assert cli.json("job", job_id, "--json")["payload"] == {"command": ["echo", "hi"]}


def test_submit_sets_command_on_top_of_payload_and_options(cli: Cli) -> None:
    job_id = cli.json(
        "submit",
        "--spec",
        SPEC,
        "--priority",
        "-4",
        "--timeout",
        "90",
        "--max-attempts",
        "3",
        "--payload",
        '{"env": {"A": "1"}, "command": "x"}',
        "--json",
        "--",
        "sh",
        "-c",
        "exit 3",
    )["id"]
    record = cli.json("job", job_id, "--json")
    assert record["payload"] == {"env": {"A": "1"}, "command": ["sh", "-c", "exit 3"]}
    assert (record["priority"], record["timeout"], record["max_attempts"]) == (-4, 90, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--payload", "[1, 2]", "--", "echo"], "must be a JSON object"),
        (["--payload", "{nope"], "not valid JSON"),
        (["--timeout", "0"], "timeout"),
        (["--max-attempts", "0"], "max_attempts"),
    ],
)
def test_submit_refuses_bad_input_with_one_line(
    cli: Cli, rclient: redis.Redis, keys: Keys, args: list[str], message: str
) -> None:
    code, out, err = cli("submit", "--spec", SPEC, *args)
    assert (code, out) == (1, "")
    assert message in err and err.count("\n") == 1
    assert not list(rclient.scan_iter(match=f"{keys.namespace}:*"))


def test_submit_wait_prints_the_id_then_the_final_record(
    cli: Cli, rclient: redis.Redis, keys: Keys
) -> None:
    pod = FakePod(rclient, keys)

    def fail_when_submitted() -> None:
        while not rclient.zcard(keys.pending(SPEC)):
            time.sleep(0.01)
        pod.run_next("failed")

    thread = threading.Thread(target=fail_when_submitted, daemon=True)
    thread.start()
    code, out, err = cli("submit", "--spec", SPEC, "--wait", "--json", "--", "false")
    thread.join()
    first, last = out.splitlines()  # the id at once, the final record at the end
    record = json.loads(last)
    assert json.loads(first) == {"id": record["id"]}
    assert set(record) >= CONTRACT_FIELDS and record["status"] == "failed"
    assert code == 1 and "failed: boom" in err


# -- job and cancel ----------------------------------------------------------------------------


def test_job_json_has_every_contract_field(cli: Cli) -> None:
    job_id = cli.json("submit", "--spec", SPEC, "--json", "--", "true")["id"]
    record = cli.json("job", job_id, "--json")
    assert set(record) >= CONTRACT_FIELDS
    assert (record["id"], record["status"], record["timeout"]) == (job_id, "pending", 3600)


def test_job_without_json_prints_a_summary(cli: Cli) -> None:
    job_id = cli.json("submit", "--spec", SPEC, "--json", "--", "make", "test")["id"]
    code, out, _ = cli("job", job_id)
    assert code == 0
    assert f"job       {job_id}" in out and "status    pending" in out and '"make"' in out


def test_cancel_then_cancel_again(cli: Cli) -> None:
    job_id = cli.json("submit", "--spec", SPEC, "--json", "--", "true")["id"]
    assert cli("cancel", job_id)[:2] == (0, f"canceled {job_id}\n")
    assert cli("cancel", job_id)[:2] == (0, f"job {job_id} is already canceled\n")
    assert cli.json("cancel", job_id, "--json") == {
        "id": job_id,
        "canceled": False,
        "status": "canceled",
    }


@pytest.mark.parametrize("command", ["job", "cancel"])
@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "no-such-id"])
def test_unknown_job_is_an_error(cli: Cli, command: str, job_id: str) -> None:
    code, out, err = cli(command, job_id)
    assert (code, out, err) == (1, "", f"dispatcher: no such job: {job_id}\n")


# -- status ------------------------------------------------------------------------------------


def test_status_json_and_text(cli: Cli, rclient: redis.Redis, keys: Keys) -> None:
    cli("submit", "--spec", "mac", "--", "true")
    FakePod(rclient, keys)
    snapshot = cli.json("status", "--json")
    assert snapshot["specs"]["mac"] == {"pending": 1, "idle_runners": 0}
    assert snapshot["runners"]["total"] == 1 and snapshot["counters"] == {"submitted": 1}
    code, out, _ = cli("status")
    assert code == 0 and f"namespace {keys.namespace}" in out and "mac" in out


# -- runners -----------------------------------------------------------------------------------


def test_runner_add_json_shape_and_stored_digest(
    cli: Cli, rclient: redis.Redis, keys: Keys
) -> None:
    added = cli.json("runner", "add", "r1", "--spec", "linux", "--spec", "mac", "--json")
    assert set(added) == {"name", "token", "specs", "ephemeral"}
    assert added["ephemeral"] is False
    assert (added["name"], added["specs"]) == ("r1", ["linux", "mac"])
    assert len(added["token"]) >= 40
    assert rclient.hget(keys.runner("r1"), "token_hash") == token_hash(added["token"])


def test_runner_add_text_shows_the_token_once(cli: Cli, rclient: redis.Redis, keys: Keys) -> None:
    code, out, _ = cli("runner", "add", "r1", "--spec", SPEC)
    token = out.split("token: ")[1].split()[0]
    assert code == 0 and rclient.hget(keys.runner("r1"), "token_hash") == token_hash(token)
    assert cli("runner", "add", "r1", "--spec", SPEC)[0] == 1  # the name is taken


def test_runner_list_and_revoke(cli: Cli) -> None:
    assert cli.json("runner", "list", "--json") == []
    cli("runner", "add", "b", "--spec", SPEC)
    cli("runner", "add", "a", "--spec", "mac")
    listed = cli.json("runner", "list", "--json")
    assert [r["name"] for r in listed] == ["a", "b"]
    assert {"name", "specs", "state", "pod", "job"} <= set(listed[0])
    assert (listed[1]["specs"], listed[1]["state"], listed[1]["pod"]) == ([SPEC], "offline", None)
    assert "offline" in cli("runner", "list")[1]
    assert cli("runner", "revoke", "a")[:2] == (0, "revoked a\n")
    assert [r["name"] for r in cli.json("runner", "list", "--json")] == ["b"]
    assert cli("runner", "revoke", "a") == (1, "", "dispatcher: no such runner: a\n")


# -- options and failures ----------------------------------------------------------------------


def test_global_options_also_work_after_the_subcommand(
    redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["runner", "list", "--json", "--redis-url", redis_url, "--namespace", namespace]) == 0
    )
    assert json.loads(capsys.readouterr().out) == []


def test_unreachable_redis_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--redis-url", "redis://127.0.0.1:1/0", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dispatcher: cannot reach Redis") and err.count("\n") == 1


def test_usage_errors_exit_with_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "--priority", "high"])
    assert exit_info.value.code == 2


def test_console_script_exit_statuses(redis_url: str, namespace: str) -> None:
    base = [DISPATCHER, "--redis-url", redis_url, "--namespace", namespace]
    submitted = subprocess.run(
        [*base, "submit", "--spec", SPEC, "--json", "--", "echo", "hi"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    unknown = subprocess.run(
        [*base, "job", str(uuid.uuid4())], capture_output=True, text=True, timeout=30
    )
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr.startswith("dispatcher: no such job")
    shown = subprocess.run(
        [*base, "job", job_id, "--json"], capture_output=True, text=True, timeout=30
    )
    assert json.loads(shown.stdout)["payload"]["command"] == ["echo", "hi"]
