"""Reading a job's live log: ``Client.logs``, ``AsyncClient.logs`` and `dispatcher logs`."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from typing import Any

import pytest

from dispatcher import functions as fn
from dispatcher.cli import main
from dispatcher.cli_logs import ChunkPrinter
from dispatcher.client import AsyncClient, Client
from dispatcher.errors import NotFound
from dispatcher.keys import Keys
from dispatcher.logs import LogChunk
from tests.dispatcher.support import new_job_id
from tests.dispatcher.test_logs_store import append, claimed

RClient = Any


def finish(rclient: RClient, keys: Keys, job_id: str, attempt: int) -> None:
    call = fn.finish(
        keys,
        "r1",
        job_id,
        attempt,
        "failed",
        exit_code=1,
        results=None,
        stdout=None,
        stderr=None,
        error="exit 1",
    )
    assert fn.run_sync(rclient, call)["result"] == "recorded"


def writer(rclient: RClient, keys: Keys, job_id: str, attempt: int, n: int) -> threading.Thread:
    """Appends chunks 1..n-1 and then ends the job, from another thread, at its own pace."""

    def run() -> None:
        for seq in range(1, n):
            append(rclient, keys, job_id, attempt, seq, f"line {seq}\n")
        finish(rclient, keys, job_id, attempt)

    return threading.Thread(target=run, daemon=True)


def test_logs_returns_what_is_stored_now(settings, rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    append(rclient, keys, job_id, attempt, 0, "out\n")
    append(rclient, keys, job_id, attempt, 1, "err\n", stream="stderr")
    with Client(settings) as client:
        got = list(client.logs(job_id))  # not final, not following: returns at once
    assert [(c.stream, c.data) for c in got] == [("stdout", "out\n"), ("stderr", "err\n")]


def test_follow_yields_every_chunk_and_ends_when_the_job_is_final(settings, rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    append(rclient, keys, job_id, attempt, 0, "line 0\n")
    thread = writer(rclient, keys, job_id, attempt, 50)
    with Client(settings) as client:
        thread.start()
        got = [c.data for c in client.logs(job_id, follow=True)]
    thread.join(10)
    assert got == [f"line {i}\n" for i in range(50)]


async def test_async_follow_yields_every_chunk_and_ends_when_the_job_is_final(
    settings, rclient, keys
):
    job_id, attempt = claimed(rclient, keys)
    append(rclient, keys, job_id, attempt, 0, "line 0\n")
    thread = writer(rclient, keys, job_id, attempt, 20)
    async with AsyncClient(settings) as client:
        thread.start()

        async def follow() -> list[str]:
            return [c.data async for c in client.logs(job_id, follow=True)]

        got = await asyncio.wait_for(follow(), 30)
    thread.join(10)
    assert got == [f"line {i}\n" for i in range(20)]


async def test_unknown_or_malformed_job_ids_are_refused(settings):
    with Client(settings) as client:
        with pytest.raises(NotFound):
            list(client.logs(new_job_id()))
        with pytest.raises(NotFound):  # not a UUID: cannot name a job
            list(client.logs("not-an-id"))
    async with AsyncClient(settings) as client:
        with pytest.raises(NotFound):
            [c async for c in client.logs(new_job_id(), follow=True)]


def run_cli(capsys, settings, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    base = ["--redis-url", settings.redis_url, "--namespace", settings.namespace]
    code = main([*base, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_follow_prints_the_log_and_exits_when_final(capsys, settings, rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    append(rclient, keys, job_id, attempt, 0, "line 0\n")
    thread = writer(rclient, keys, job_id, attempt, 10)
    thread.start()
    code, out, err = run_cli(capsys, settings, "logs", job_id[:8], "--follow")
    thread.join(10)
    assert (code, err) == (0, "")
    assert out == "".join(f"line {i}\n" for i in range(10))


def test_cli_json_prints_one_object_per_chunk(capsys, settings, rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    append(rclient, keys, job_id, attempt, 0, "a\n")
    append(rclient, keys, job_id, attempt, 1, "b\n", stream="stderr")
    code, out, _ = run_cli(capsys, settings, "logs", job_id, "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [(x["attempt"], x["seq"], x["stream"], x["data"]) for x in lines] == [
        (attempt, 0, "stdout", "a\n"),
        (attempt, 1, "stderr", "b\n"),
    ]


@pytest.mark.parametrize("job", ["0" * 8 + "-0000-4000-8000-" + "0" * 12, "zz-not-hex"])
def test_cli_unknown_job_is_one_line_on_stderr_and_status_1(capsys, settings, rclient, keys, job):
    before = sorted(rclient.scan_iter(match=f"{keys.namespace}:*"))
    for extra in ((), ("--follow",), ("--json",)):
        code, out, err = run_cli(capsys, settings, "logs", job, *extra)
        assert code == 1 and out == "" and len(err.splitlines()) == 1, err
        assert err.startswith("dispatcher: ")
    assert sorted(rclient.scan_iter(match=f"{keys.namespace}:*")) == before


def test_text_output_marks_where_a_later_attempt_begins():
    out = io.StringIO()
    printer = ChunkPrinter(out)
    for chunk in (
        LogChunk("1-0", 1, 0, "stdout", "first"),
        LogChunk("2-0", 2, 0, "stdout", "second\n"),
        LogChunk("3-0", 3, 0, "stderr", "third\n"),
    ):
        printer.write(chunk)
    assert out.getvalue() == "first\n--- attempt 2 ---\nsecond\n--- attempt 3 ---\nthird\n"
