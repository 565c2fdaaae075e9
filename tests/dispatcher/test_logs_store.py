"""The log functions on a real Redis (PROTOCOL.md 1.1 rules 9-10): fenced, once per seq, capped
with a note, read with the job's status at one moment, expiring with the job record."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher import functions as fn
from dispatcher import logs
from dispatcher.errors import InvalidInput
from dispatcher.keys import Keys
from tests.dispatcher.support import SPEC, job_rec, new_job_id, submit

RClient = Any
MAX = 1 << 20


def claimed(rclient: RClient, keys: Keys, name: str = "r1") -> tuple[str, int]:
    """A job claimed by runner ``name`` (not started): its id and attempt."""
    fn.run_sync(rclient, fn.tick(keys, "pod-a", 10_000))
    fn.run_sync(rclient, fn.runner_add(keys, name, "h" * 64, [SPEC]))
    conn = fn.run_sync(rclient, fn.attach(keys, name, "pod-a"))["conn"]
    fn.run_sync(rclient, fn.ready(keys, name, conn, ""))
    job_id = submit(rclient, keys)
    assert job_rec(rclient, keys, job_id)["status"] == "claimed"
    return job_id, int(job_rec(rclient, keys, job_id)["attempt"])


def append(
    rclient: RClient,
    keys: Keys,
    job_id: str,
    attempt: int,
    seq: int,
    data: str = "x",
    *,
    runner: str = "r1",
    stream: str = "stdout",
    max_bytes: int = MAX,
) -> str:
    call = logs.append(keys, runner, job_id, attempt, seq, stream, data, max_bytes)
    return fn.run_sync(rclient, call)


def stored(rclient: RClient, keys: Keys, job_id: str) -> list[tuple[int, int, str, str]]:
    page = fn.run_sync(rclient, logs.read(keys, job_id))
    return [(c.attempt, c.seq, c.stream, c.data) for c in page.chunks]


def test_chunks_are_stored_in_order_while_claimed_and_running(rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    assert append(rclient, keys, job_id, attempt, 0, "before running\n") == "stored"
    assert fn.run_sync(rclient, fn.start(keys, "r1", job_id, attempt))["result"] == "ok"
    assert append(rclient, keys, job_id, attempt, 1, "oops\n", stream="stderr") == "stored"
    assert stored(rclient, keys, job_id) == [
        (attempt, 0, "stdout", "before running\n"),
        (attempt, 1, "stderr", "oops\n"),
    ]


def test_a_seq_not_above_the_last_is_a_repeat_and_stored_once(rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    assert append(rclient, keys, job_id, attempt, 5, "a") == "stored"
    assert append(rclient, keys, job_id, attempt, 5, "a") == "repeat"
    assert append(rclient, keys, job_id, attempt, 2, "old") == "repeat"
    assert append(rclient, keys, job_id, attempt, 6, "b") == "stored"
    assert [c[3] for c in stored(rclient, keys, job_id)] == ["a", "b"]


def test_seqs_beyond_a_lua_numbers_precision_compare_exactly(rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    big = 2**64 + 1
    assert append(rclient, keys, job_id, attempt, big, "a") == "stored"
    assert append(rclient, keys, job_id, attempt, big, "a") == "repeat"
    assert append(rclient, keys, job_id, attempt, big + 1, "b") == "stored"
    assert stored(rclient, keys, job_id)[-1][1] == big + 1


def test_foreign_runner_attempt_and_unknown_job_store_nothing(rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    fn.run_sync(rclient, fn.runner_add(keys, "r2", "h" * 64, [SPEC]))
    assert append(rclient, keys, job_id, attempt, 0, runner="r2") == "stale"
    assert append(rclient, keys, job_id, attempt + 1, 0) == "stale"
    assert append(rclient, keys, new_job_id(), 1, 0) == "unknown"
    assert append(rclient, keys, job_id, attempt, 0, runner="nobody") == "stale"
    assert not rclient.exists(keys.log(job_id))


def test_after_the_terminal_message_nothing_more_is_stored(rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    assert append(rclient, keys, job_id, attempt, 0) == "stored"
    finish = fn.finish(
        keys,
        "r1",
        job_id,
        attempt,
        "completed",
        exit_code=0,
        results=None,
        stdout=None,
        stderr=None,
        error="",
    )
    assert fn.run_sync(rclient, finish)["result"] == "recorded"
    assert append(rclient, keys, job_id, attempt, 1) == "stale"
    assert len(stored(rclient, keys, job_id)) == 1


def test_a_log_does_not_extend_the_lease(rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    fn.run_sync(rclient, fn.start(keys, "r1", job_id, attempt))
    before = (rclient.zscore(keys.leases, job_id), job_rec(rclient, keys, job_id)["lease_deadline"])
    for seq in range(3):
        assert append(rclient, keys, job_id, attempt, seq) == "stored"
    after = (rclient.zscore(keys.leases, job_id), job_rec(rclient, keys, job_id)["lease_deadline"])
    assert after == before


def test_past_the_limit_chunks_are_dropped_and_the_log_ends_with_one_note(rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    limit = 3 * (100 + 64)  # three 100-byte chunks with their entry cost
    for seq in range(3):
        assert append(rclient, keys, job_id, attempt, seq, "a" * 100, max_bytes=limit) == "stored"
    assert append(rclient, keys, job_id, attempt, 3, "b" * 10, max_bytes=limit) == "dropped"
    assert append(rclient, keys, job_id, attempt, 3, "b" * 10, max_bytes=limit) == "repeat"
    assert append(rclient, keys, job_id, attempt, 4, "c" * 20, max_bytes=limit) == "dropped"
    log = stored(rclient, keys, job_id)
    assert [c[3] for c in log[:3]] == ["a" * 100] * 3
    assert len(log) == 4, "one note, moved to the end, not one per dropped chunk"
    assert log[-1][2] == "note"
    assert "30 bytes in 2 chunks dropped" in log[-1][3]
    record = job_rec(rclient, keys, job_id)
    assert (record["log_dropped"], record["log_dropped_chunks"]) == ("30", "2")


@pytest.mark.parametrize(
    ("seq", "stream", "data", "message"),
    [
        ("-1", "stdout", "x", "invalid seq"),
        ("01", "stdout", "x", "invalid seq"),
        ("1.5", "stdout", "x", "invalid seq"),
        ("", "stdout", "x", "invalid seq"),
        ("1", "stdin", "x", "invalid stream"),
        ("1", "stdout", "x" * 65537, "invalid data"),
    ],
)
def test_bad_arguments_are_refused_and_store_nothing(rclient, keys, seq, stream, data, message):
    job_id, attempt = claimed(rclient, keys)
    call = logs.append(keys, "r1", job_id, attempt, 0, stream, data, MAX)
    bad = fn.Call(call.name, call.keys, (*call.args[:4], seq, *call.args[5:]), call.parse)
    with pytest.raises(InvalidInput, match=message):
        fn.run_sync(rclient, bad)
    assert not rclient.exists(keys.log(job_id))


def test_read_pages_through_and_knows_when_the_log_is_complete(rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    for seq in range(5):
        append(rclient, keys, job_id, attempt, seq, str(seq))
    first = fn.run_sync(rclient, logs.read(keys, job_id, count=3))
    assert [c.data for c in first.chunks] == ["0", "1", "2"] and not first.complete
    rest = fn.run_sync(rclient, logs.read(keys, job_id, first.after(logs.START), count=3))
    assert [c.data for c in rest.chunks] == ["3", "4"]
    assert rest.status == "claimed" and not rest.complete  # still in flight: more may come
    fn.run_sync(rclient, fn.cancel(keys, job_id))
    done = fn.run_sync(rclient, logs.read(keys, job_id, rest.after("0"), count=3))
    assert done.chunks == () and done.complete
    unknown = fn.run_sync(rclient, logs.read(keys, new_job_id()))
    assert unknown.status == "" and unknown.chunks == ()


def test_the_log_expires_with_the_job_record(rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    append(rclient, keys, job_id, attempt, 0)
    fn.run_sync(rclient, fn.cancel(keys, job_id))
    assert rclient.ttl(keys.log(job_id)) == -1  # not final for the writers yet: kept
    assert fn.run_sync(rclient, fn.record(keys, [f"{job_id}:{attempt}"], 600, []))[0][1]
    job_ttl, log_ttl = rclient.ttl(keys.job(job_id)), rclient.ttl(keys.log(job_id))
    assert 0 < job_ttl <= 600 and abs(job_ttl - log_ttl) <= 1


def test_lone_surrogates_are_stored_as_replacement_characters(rclient, keys):
    job_id, attempt = claimed(rclient, keys)
    assert append(rclient, keys, job_id, attempt, 0, "a\ud800b") == "stored"
    assert stored(rclient, keys, job_id)[0][3] == "a\ufffdb"
