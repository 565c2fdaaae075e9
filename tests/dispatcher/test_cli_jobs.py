"""`dispatcher submit` (id first, progress, --wait-timeout, payload check, spec warning),
`dispatcher jobs`, id prefixes, one-line errors and the --help texts."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import redis

from dispatcher import functions
from dispatcher.cli import build_parser, main
from dispatcher.keys import Keys
from tests.jobflow import SPEC, FakePod

NO_REDIS = "redis://127.0.0.1:1/0"


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


@pytest.fixture
def cli(redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(redis_url, namespace, capsys)


def namespace_keys(rclient: redis.Redis, keys: Keys) -> list[str]:
    return sorted(rclient.scan_iter(match=f"{keys.namespace}:*", count=1000))


def submit_with_id(rclient: redis.Redis, keys: Keys, job_id: str, spec: str = SPEC) -> str:
    call = functions.submit(keys, job_id, spec, '{"command": ["true"]}', 0, 60, 1)
    return functions.run_sync(rclient, call)


def record(rclient: redis.Redis, keys: Keys, job_id: str, attempt: int) -> None:
    functions.run_sync(rclient, functions.record(keys, [f"{job_id}:{attempt}"], 0, []))


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# -- submit ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "neither 'command'"),
        (["--payload", '{"env": {"A": "1"}}'], "neither 'command'"),
        (["--payload", '{"script": "x", "command": ["y"]}'], "both 'command' and 'script'"),
        (["--payload", '{"command": []}'], "non-empty list of strings"),
        (["--payload", '{"command": ["ls", 1]}'], "non-empty list of strings"),
        (["--payload", '{"script": 5}'], "neither 'command'"),
        (["--payload", '"make"'], "JSON object"),
        (["--payload", '{"script": "x", "cwd": "../up"}'], "relative"),
        (["--payload", '{"script": "x", "env": {"A": 1}}'], "'env'"),
    ],
)
def test_submit_refuses_a_payload_no_runner_could_run_and_writes_nothing(
    cli: Cli, rclient: redis.Redis, keys: Keys, args: list[str], message: str
) -> None:
    code, out, err = cli("submit", "--spec", SPEC, *args)
    assert (code, out) == (1, "")
    assert message in err and one_line(err), err
    assert namespace_keys(rclient, keys) == []


def test_submit_without_payload_says_how_to_give_one(cli: Cli) -> None:
    code, _, err = cli("submit", "--spec", SPEC)
    assert code == 1 and "give the command after --" in err and one_line(err)


def test_any_payload_sends_a_payload_as_it_is(cli: Cli, rclient: redis.Redis, keys: Keys) -> None:
    code, out, _ = cli("submit", "--spec", SPEC, "--any-payload", "--payload", '{"model": "x"}')
    assert code == 0
    assert json.loads(str(rclient.hget(keys.job(out.strip()), "payload"))) == {"model": "x"}


def test_submit_warns_at_once_when_no_runner_serves_the_spec(
    cli: Cli, rclient: redis.Redis, keys: Keys
) -> None:
    code, out, err = cli("submit", "--spec", "linux", "--", "true")
    assert code == 0 and uuid.UUID(out.strip())
    assert err == (
        "dispatcher: warning: no runner is registered for spec 'linux'; the job waits until "
        "one is (there are no runners at all)\n"
    )
    FakePod(rclient, keys, runner="mac-1", specs=("mac", "local"))
    _, _, err = cli("submit", "--spec", "linux", "--", "true")
    assert "(runners serve: local, mac)" in err
    _, _, err = cli("submit", "--spec", "mac", "--", "true")
    assert err == ""  # served by a connected runner: nothing to say


def test_submit_notes_when_the_specs_runners_are_all_offline(cli: Cli) -> None:
    cli("runner", "add", "b1", "--spec", SPEC)
    code, _, err = cli("submit", "--spec", SPEC, "--", "true")
    assert (
        code == 0
        and err == f"dispatcher: note: the runners of spec '{SPEC}' are offline now (b1)\n"
    )


def test_wait_timeout_prints_the_id_first_and_exits_124(cli: Cli, rclient, keys) -> None:
    code, out, err = cli("submit", "--spec", SPEC, "--wait-timeout", "0.3", "--", "true")
    job_id = out.strip()
    assert code == 124 and uuid.UUID(job_id)
    assert err.splitlines()[-1] == (
        f"dispatcher: stopped waiting after 0.3 s; job {job_id} is pending and goes on "
        f"(dispatcher job {job_id[:8]})"
    )
    assert rclient.hget(keys.job(job_id), "status") == "pending"


def test_wait_reports_each_status_change_and_prints_a_summary(
    cli: Cli, rclient: redis.Redis, keys: Keys
) -> None:
    pod = FakePod(rclient, keys)

    def run_when_submitted() -> None:
        deadline = time.monotonic() + 10
        while not rclient.zcard(keys.pending(SPEC)) and time.monotonic() < deadline:
            time.sleep(0.01)
        job_id, attempt = pod.run_next("completed")
        record(rclient, keys, job_id, attempt)

    thread = threading.Thread(target=run_when_submitted, daemon=True)
    thread.start()
    code, out, err = cli("submit", "--spec", SPEC, "--wait", "--", "make", "test")
    thread.join()
    job_id = out.splitlines()[0]
    assert code == 0 and uuid.UUID(job_id)
    assert f"job       {job_id}" in out and "status    processed" in out  # text, not JSON
    progress = [line.split(" ", 4)[-1] for line in err.splitlines()]
    assert progress == [
        "claimed by r1 (attempt 1)",
        "running on r1",
        "completed; a result writer records it",
        "processed",
    ], err
    assert all(line.startswith("dispatcher: ") for line in err.splitlines())


def test_client_wait_with_progress_returns_a_job_already_final(
    redis_url: str, namespace: str, rclient: redis.Redis, keys: Keys
) -> None:
    from dispatcher.client import Client
    from dispatcher.settings import Settings

    pod = FakePod(rclient, keys)
    with Client(Settings(redis_url=redis_url, namespace=namespace)) as client:
        job_id = client.submit(SPEC, {"script": "x"}, check_payload=True)
        pod.run_next("failed")
        seen: list[str] = []
        final = client.wait(job_id, 5, progress=lambda e: seen.append(e["event"]), since="0")
    assert final["status"] == "failed"
    assert seen == []  # final at the first look: nothing to follow


# -- jobs --------------------------------------------------------------------------------------


@pytest.fixture
def fleet(rclient: redis.Redis, keys: Keys) -> dict[str, str]:
    """One job in each status, submitted in this order (so newest first is the reverse)."""
    pod = FakePod(rclient, keys, runner="r1", specs=(SPEC,))
    ids: dict[str, str] = {}

    def add(name: str, spec: str = SPEC) -> str:
        ids[name] = functions.run_sync(
            rclient, functions.submit(keys, "", spec, '{"script": "x"}', 0, 60, 1)
        )
        return ids[name]

    add("processed")
    job_id, attempt = pod.run_next("completed")
    record(rclient, keys, job_id, attempt)
    add("failed")
    pod.run_next("failed")
    add("canceled")
    functions.run_sync(rclient, functions.cancel(keys, ids["canceled"]))
    add("running")
    pod.take()
    add("pending")
    add("mac", spec="mac")
    return ids


def test_jobs_lists_every_status_newest_first(cli: Cli, fleet: dict[str, str]) -> None:
    code, out, err = cli("jobs", "--json")
    listed = json.loads(out)
    assert (code, err) == (0, "")
    assert [j["id"] for j in listed] == [
        fleet[n] for n in ("mac", "pending", "running", "canceled", "failed", "processed")
    ]
    assert [j["status"] for j in listed] == [
        "pending",
        "pending",
        "running",
        "canceled",
        "failed",
        "processed",
    ]
    assert set(listed[0]) == {
        "id",
        "spec",
        "status",
        "runner",
        "attempt",
        "priority",
        "created",
        "finished",
        "error",
        "exit_code",
    }
    assert (listed[2]["runner"], listed[4]["error"], listed[5]["exit_code"]) == ("r1", "boom", 0)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--status", "pending"], ["mac", "pending"]),
        (["--status", "running"], ["running"]),
        (["--status", "failed"], ["failed"]),
        (["--status", "claimed"], []),
        (["--spec", "mac"], ["mac"]),
        (["--runner", "r1"], ["running", "failed", "processed"]),
        (["--runner", "r1", "--status", "pending"], []),
        (["--spec", SPEC, "--limit", "2"], ["pending", "running"]),
        (["--limit", "1"], ["mac"]),
    ],
)
def test_jobs_filters(cli: Cli, fleet: dict[str, str], args: list[str], names: list[str]) -> None:
    code, out, _ = cli("jobs", *args, "--json")
    assert code == 0
    assert [j["id"] for j in json.loads(out)] == [fleet[n] for n in names]


def test_jobs_text_table(cli: Cli, fleet: dict[str, str]) -> None:
    code, out, _ = cli("jobs", "--status", "failed")
    header, row = out.splitlines()
    assert code == 0 and header.split() == ["ID", "STATUS", "SPEC", "RUNNER", "CREATED", "OUTCOME"]
    assert row.startswith(fleet["failed"]) and row.split()[1:4] == ["failed", SPEC, "r1"]
    assert row.endswith("boom")
    assert cli("jobs", "--spec", "nothing-here") == (0, "no jobs\n", "")


def test_final_jobs_come_from_the_event_stream_only(
    cli: Cli, fleet: dict[str, str], rclient: redis.Redis, keys: Keys
) -> None:
    rclient.xtrim(keys.events, maxlen=0)
    _, out, _ = cli("jobs", "--json")
    # pending and in-flight jobs are all indexed; the final ones were known only by their events
    assert [j["id"] for j in json.loads(out)] == [fleet[n] for n in ("mac", "pending", "running")]
    # still reachable by a prefix: the bounded SCAN finds the record
    code, out, _ = cli("job", fleet["failed"][:10], "--json")
    assert code == 0 and json.loads(out)["status"] == "failed"


# -- id prefixes -------------------------------------------------------------------------------

A1 = "aaaa0000-0000-4000-8000-000000000001"
A2 = "aaaa0000-0000-4000-8000-000000000002"
B1 = "bbbb1111-0000-4000-8000-000000000001"


@pytest.fixture
def three(rclient: redis.Redis, keys: Keys) -> None:
    for job_id in (A1, A2, B1):
        submit_with_id(rclient, keys, job_id)


@pytest.mark.usefixtures("three")
@pytest.mark.parametrize("prefix", ["b", "bbbb1111", "BBBB1111-0", B1])
def test_a_unique_prefix_names_the_job(cli: Cli, prefix: str) -> None:
    code, out, _ = cli("job", prefix, "--json")
    assert code == 0 and json.loads(out)["id"] == B1


@pytest.mark.usefixtures("three")
@pytest.mark.parametrize("command", ["job", "cancel"])
def test_an_ambiguous_prefix_lists_the_matches(
    cli: Cli, rclient: redis.Redis, keys: Keys, command: str
) -> None:
    code, out, err = cli(command, "aaaa0000")
    assert (code, out) == (1, "")
    assert err == f"dispatcher: job id prefix aaaa0000 is ambiguous: it matches {A1}, {A2}\n"
    assert rclient.hget(keys.job(A1), "status") == rclient.hget(keys.job(A2), "status") == "pending"


@pytest.mark.usefixtures("three")
@pytest.mark.parametrize("command", ["job", "cancel"])
@pytest.mark.parametrize("prefix", ["c", "aaaa00001", "not-hex", "x" * 40, ""])
def test_no_match_is_no_such_job(cli: Cli, command: str, prefix: str) -> None:
    assert cli(command, prefix) == (1, "", f"dispatcher: no such job: {prefix}\n")


@pytest.mark.usefixtures("three")
def test_cancel_by_prefix(cli: Cli, rclient: redis.Redis, keys: Keys) -> None:
    assert cli("cancel", "bbbb")[:2] == (0, f"canceled {B1}\n")
    assert rclient.hget(keys.job(B1), "status") == "canceled"


@pytest.mark.usefixtures("three")
def test_an_expired_record_is_not_a_match(cli: Cli, rclient: redis.Redis, keys: Keys) -> None:
    rclient.delete(keys.job(A2))  # its events and queue entry remain, as after a retention TTL
    code, out, _ = cli("job", "aaaa", "--json")
    assert code == 0 and json.loads(out)["id"] == A1


async def test_async_client_resolves_and_lists(
    redis_url: str, namespace: str, rclient: redis.Redis, keys: Keys
) -> None:
    from dispatcher.client import AsyncClient
    from dispatcher.settings import Settings

    for job_id in (A1, B1):
        submit_with_id(rclient, keys, job_id)
    async with AsyncClient(Settings(redis_url=redis_url, namespace=namespace)) as client:
        assert await client.resolve("BB") == B1
        assert [j["id"] for j in await client.jobs(limit=5)] == [B1, A1]
        assert await client.runners() == []


# -- one-line errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["jobs", "--limit", "x"], 2, "not a whole number"),
        (["jobs", "--limit", "0"], 2, "out of range"),
        (["jobs", "--status", "done"], 2, "invalid choice"),
        (["jobs", "--spec", "has space"], 1, "invalid spec"),
        (["submit", "--spec", SPEC, "--wait-timeout", "-1", "--", "true"], 2, "> 0"),
        (["submit", "--spec", SPEC, "--wait-timeout", "soon", "--", "true"], 2, "not a number"),
        (["submit", "--spec", SPEC, "--priority", "high", "--", "true"], 2, "invalid int"),
        (["submit", "--spec", SPEC, "--priority", str(2**60), "--", "true"], 1, "priority"),
        (["submit", "--spec", SPEC, "--timeout", "nan", "--", "true"], 1, "timeout"),
        (["submit", "--spec", "bad spec", "--", "true"], 1, "invalid spec"),
        (["submit", "--", "true"], 2, "--spec"),
        (["runner", "rotate"], 2, "NAME"),
        (["runner", "rotate", "ghost"], 1, "no such runner: ghost"),
        (["nonsense"], 2, "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    cli: Cli, rclient: redis.Redis, keys: Keys, args: list[str], code: int, message: str
) -> None:
    got, out, err = cli(*args)
    assert (got, out) == (code, "")
    assert message in err and one_line(err), err
    assert namespace_keys(rclient, keys) == []


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "--spec", SPEC, "--", "true"],
        ["submit", "--spec", SPEC, "--wait", "--", "true"],
        ["job", "abcd"],
        ["job", A1],
        ["cancel", "abcd"],
        ["jobs"],
        ["status"],
        ["runner", "list"],
        ["runner", "add", "r9", "--spec", SPEC],
        ["runner", "rotate", "r9"],
        ["runner", "revoke", "r9"],
    ],
)
def test_unreachable_redis_is_one_line(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    started = time.monotonic()
    assert main(["--redis-url", NO_REDIS, *args]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("dispatcher: cannot reach Redis") and one_line(err), err
    assert time.monotonic() - started < 10  # no retry loop in front of the message


# -- help ----------------------------------------------------------------------------------------


def _subcommand_helps() -> list[list[str]]:
    commands = [
        ["serve"],
        ["submit"],
        ["cancel"],
        ["job"],
        ["jobs"],
        ["status"],
        ["runner"],
        ["runner", "add"],
        ["runner", "list"],
        ["runner", "rotate"],
        ["runner", "revoke"],
    ]
    return [[], *commands]


@pytest.mark.parametrize("command", _subcommand_helps(), ids=lambda c: " ".join(c) or "dispatcher")
def test_help_has_examples_and_environment(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "\nexamples:\n  dispatcher" in out
    assert "\nenvironment:\n  " in out
    if command != ["serve"]:
        assert "DISPATCHER_REDIS_URL" in out and "DISPATCHER_NAMESPACE" in out


def test_submit_help_states_the_payload_conventions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "--help"])
    out = capsys.readouterr().out
    for word in ("command", "script", "env", "cwd", "outputs", "exit status", "124"):
        assert word in out
