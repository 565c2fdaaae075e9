"""The live-log batcher (``runner.logstream``), fed bytes and time without a loop, and the
sender (``runner.logsend``) on a loop with a recording ``send``."""

from __future__ import annotations

import asyncio

import pytest

from dispatch_protocol.messages import MAX_LOG_DATA_BYTES, Log, decode_runner_message, encode
from runner.logsend import LogSender
from runner.logstream import FLUSH_BYTES, FLUSH_INTERVAL, LogBatcher, complete_prefix, cut

JOB = "0b7f4a62-6f0e-4c59-9a8e-3c1d2e4f5a6b"


def batcher() -> LogBatcher:
    return LogBatcher(JOB, 2)


def test_small_output_waits_for_the_interval_then_goes_out_as_one_chunk():
    b = batcher()
    assert b.feed("stdout", b"hello ", 10.0) == []
    assert b.feed("stdout", b"world\n", 10.3) == []
    assert b.next_deadline() == 10.0 + FLUSH_INTERVAL
    assert b.due(10.49) == []
    (chunk,) = b.due(10.5)
    assert chunk == Log(job=JOB, attempt=2, seq=0, stream="stdout", data="hello world\n")
    assert b.next_deadline() is None and b.due(99.0) == []


def test_16_kib_waiting_goes_out_at_once_in_chunks_no_larger():
    b = batcher()
    chunks = b.feed("stdout", b"x" * (FLUSH_BYTES * 3 + 5), 0.0)
    assert [len(c.data) for c in chunks] == [FLUSH_BYTES] * 3
    assert [c.seq for c in chunks] == [0, 1, 2]
    (rest,) = b.due(FLUSH_INTERVAL)
    assert (rest.seq, rest.data) == (3, "xxxxx")


def test_seq_counts_over_both_streams_and_each_stream_keeps_its_bytes():
    b = batcher()
    b.feed("stdout", b"out", 0.0)
    b.feed("stderr", b"err", 0.1)
    chunks = b.due(0.5)
    assert [(c.seq, c.stream, c.data) for c in chunks] == [
        (0, "stdout", "out"),
        (1, "stderr", "err"),
    ]


def test_a_character_is_never_split_between_chunks():
    b = batcher()
    euro = "€".encode()  # 3 bytes
    assert b.feed("stdout", b"a" + euro[:2], 0.0) == []
    (first,) = b.due(0.5)
    assert first.data == "a"  # the incomplete character waits
    b.feed("stdout", euro[2:], 0.6)
    (second,) = b.due(1.1)
    assert second.data == "€"


def test_a_full_chunk_ends_before_a_character_that_straddles_the_limit():
    b = batcher()
    data = b"a" * (FLUSH_BYTES - 1) + "é".encode() + b"z"
    (chunk,) = b.feed("stdout", data, 0.0)
    assert len(chunk.data) == FLUSH_BYTES - 1
    (rest,) = b.flush()
    assert rest.data == "éz"


def test_the_final_flush_sends_everything_invalid_bytes_replaced():
    b = batcher()
    b.feed("stderr", b"bad \xff and cut \xe2\x82", 0.0)
    (chunk,) = b.flush()
    assert chunk.data == "bad \ufffd and cut \ufffd"
    assert b.flush() == [] and b.next_deadline() is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0),
        (b"abc", 3),
        (b"a\xc3", 1),
        (b"a\xc3\xa9", 3),
        (b"\xf0\x9f\x98", 0),
        (b"\x80\x80", 2),
    ],
)
def test_complete_prefix(data, expected):
    assert complete_prefix(data) == expected


def test_cut_makes_progress_through_bytes_that_are_no_utf8_at_all():
    assert cut(b"\x80" * 10, 4) == 4


def test_every_chunk_is_a_valid_log_message_within_the_protocol_limit():
    b = batcher()
    chunks = b.feed("stdout", "ü".encode() * 40_000, 0.0) + b.flush()
    assert "".join(c.data for c in chunks) == "ü" * 40_000
    for c in chunks:
        assert len(c.data.encode()) <= MAX_LOG_DATA_BYTES
        assert decode_runner_message(encode(c)) == c


# -- the sender -------------------------------------------------------------------------------


async def test_the_sender_sends_in_order_and_everything_left_at_close():
    sent: list[Log] = []

    async def send(message: Log) -> None:
        sent.append(message)

    sender = LogSender(JOB, 1, send)
    sender.start()
    for i in range(5):
        sender.output("stdout", f"line {i}\n".encode())
    sender.output("stdout", b"y" * FLUSH_BYTES)  # a full chunk: sent without waiting
    await sender.close()
    assert (
        "".join(c.data for c in sent)
        == "".join(f"line {i}\n" for i in range(5)) + "y" * FLUSH_BYTES
    )
    assert [c.seq for c in sent] == list(range(len(sent)))


async def test_a_slow_socket_drops_chunks_instead_of_holding_the_job():
    release = asyncio.Event()
    sent: list[Log] = []

    async def send(message: Log) -> None:
        await release.wait()
        sent.append(message)

    sender = LogSender(JOB, 1, send, max_queued=4)
    sender.start()
    for _ in range(20):  # output() never waits: 20 full chunks against a stuck socket
        sender.output("stdout", b"z" * FLUSH_BYTES)
    assert sender.dropped >= 20 - 4 - 1
    release.set()
    await sender.close()
    assert len(sent) + sender.dropped == 20
    assert [c.seq for c in sent] == sorted(c.seq for c in sent)
