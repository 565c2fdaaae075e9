"""Every handshake limit against a real pod over raw TCP: the exact status line the client
receives, the close that follows, and that nothing in Redis changed."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
import websockets

from dispatcher.keys import Keys
from tests.dispatcher.logkit import pod_logs
from tests.dispatcher.nsstate import snapshot
from tests.dispatcher.rawhttp import (
    Answer,
    close_quietly,
    exchange,
    flood_until_answered,
    hold_open,
    upgrade_head,
)
from tests.dispatcher.support import SPEC, eventually, submit, take_job
from tests.podkit import RawRunner, RunningPod, add_runner, connect

# generous: each bound only says "answered and closed", never how fast
ANSWER_BOUND = 10.0


def refused(answer: Answer, status_line: str) -> None:
    """The client received exactly this status line, then the server closed (EOF)."""
    assert answer.status_line == status_line, answer.data[:200]
    assert answer.header("Connection") == "close"
    assert answer.seconds < ANSWER_BOUND


async def handshake_status(pod: RunningPod, runner: str, token: str, **headers: str) -> Answer:
    return await exchange(
        pod.port, upgrade_head(runner, token, extra=list(headers.items())), timeout=ANSWER_BOUND
    )


@pytest.fixture
def tight(settings):
    """Settings with short, small handshake limits."""
    return dataclasses.replace(
        settings, handshake_timeout=0.5, max_pending_handshakes=4, auth_fail_rate=3
    )


# -- request head limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status_line"),
    [
        (upgrade_head(extra=[("X-Long", "y" * 9000)]),
         "HTTP/1.1 431 Request Header Fields Too Large"),
        (upgrade_head(extra=[(f"X-H{i}", "v") for i in range(200)]),
         "HTTP/1.1 431 Request Header Fields Too Large"),
        (upgrade_head(extra=[(f"X-H{i}", "v" * 4000) for i in range(5)]),
         "HTTP/1.1 431 Request Header Fields Too Large"),
        (upgrade_head(path="/v1/runners/r1/channel?" + "a" * 65536), "HTTP/1.1 414 URI Too Long"),
        (b"GET /healthz?" + b"a" * 65536 + b" HTTP/1.1\r\n\r\n", "HTTP/1.1 414 URI Too Long"),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n",
         "HTTP/1.1 431 Request Header Fields Too Large"),
    ],
    ids=["long-header-line", "200-headers", "20k-head", "64k-path", "plain-http-path",
         "plain-http-header"],
)  # fmt: skip
async def test_an_oversized_head_is_answered_and_closed(pod, rclient, namespace, data, status_line):
    before = snapshot(rclient, namespace)
    refused(await exchange(pod.port, data, timeout=ANSWER_BOUND), status_line)
    assert snapshot(rclient, namespace) == before


async def test_endless_header_lines_are_cut_at_the_head_limit(pod, rclient, namespace):
    before = snapshot(rclient, namespace)
    answer, sent = await flood_until_answered(
        pod.port, upgrade_head(end=False), b"X-More: " + b"y" * 100 + b"\r\n", timeout=ANSWER_BOUND
    )
    refused(answer, "HTTP/1.1 431 Request Header Fields Too Large")
    assert answer.data.endswith(b"too many header fields\n")
    assert snapshot(rclient, namespace) == before
    assert sent > 0


async def test_one_endless_header_line_is_cut_at_the_line_limit(pod):
    answer, _ = await flood_until_answered(
        pod.port, upgrade_head(end=False) + b"X-Endless: ", b"y" * 4096, timeout=ANSWER_BOUND
    )
    refused(answer, "HTTP/1.1 431 Request Header Fields Too Large")
    assert answer.data.endswith(b"header line too long\n")


async def test_a_good_head_after_the_limits_still_works(pod, settings, rclient, keys):
    """The limits cut only what is over them: a real runner's handshake goes through."""
    token = add_runner(settings, "r1", [SPEC])
    await exchange(pod.port, upgrade_head(extra=[("X-Long", "y" * 9000)]), timeout=ANSWER_BOUND)
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    assert (await take_job(runner))["job"] == job_id
    await runner.close()


# -- the deadline -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", upgrade_head(end=False), b"GET /healthz HTTP/1.1\r\nHost: a\r\n"],
    ids=["nothing", "half-upgrade", "half-plain"],
)
async def test_an_incomplete_head_is_answered_408_after_the_handshake_timeout(launch, tight, data):
    pod = await launch(tight)
    answer = await exchange(pod.port, data, timeout=ANSWER_BOUND)
    refused(answer, "HTTP/1.1 408 Request Timeout")
    assert answer.seconds >= tight.handshake_timeout * 0.9


async def test_held_half_handshakes_are_all_closed(launch, settings):
    """The measured case of the issue (500 half upgrades held open), scaled to a test."""
    pod = await launch(dataclasses.replace(settings, handshake_timeout=0.5))
    answers = await asyncio.gather(
        *(exchange(pod.port, upgrade_head(end=False), timeout=ANSWER_BOUND) for _ in range(100))
    )
    assert {a.status for a in answers} == {408}
    assert pod.server.gate is not None
    await eventually(lambda: pod.server.gate.pending == 0, what="no pending handshakes")


# -- the cap on pending handshakes ------------------------------------------------------------


async def test_past_the_pending_cap_a_connection_is_answered_503(launch, tight, settings):
    pod = await launch(dataclasses.replace(tight, handshake_timeout=60))
    gate = pod.server.gate
    assert gate is not None
    held = [await hold_open(pod.port) for _ in range(tight.max_pending_handshakes)]
    try:
        await eventually(lambda: gate.pending == tight.max_pending_handshakes, what="all pending")
        answer = await exchange(pod.port, upgrade_head(), timeout=ANSWER_BOUND)
        refused(answer, "HTTP/1.1 503 Service Unavailable")
        assert answer.header("Retry-After") == "1"
        # one pending handshake ends: the next connection is served again
        await close_quietly(held.pop()[1])
        await eventually(lambda: gate.pending < tight.max_pending_handshakes, what="one left")
        token = add_runner(settings, "r1", [SPEC])
        runner = await connect(pod, "r1", token)
        await runner.close()
    finally:
        for _, writer in held:
            await close_quietly(writer)


async def test_accepted_runners_do_not_count_as_pending(launch, tight, settings):
    pod = await launch(tight)
    tokens = {f"r{i}": add_runner(settings, f"r{i}", [SPEC]) for i in range(8)}
    runners = [await connect(pod, name, token) for name, token in tokens.items()]
    assert pod.server.gate is not None
    assert pod.server.gate.pending == 0
    for runner in runners:
        await runner.close()


# -- failed authentications per source address ------------------------------------------------


async def test_failed_authentications_are_limited_per_source(
    launch, tight, settings, rclient, namespace
):
    pod = await launch(tight)
    token = add_runner(settings, "r1", [SPEC])
    submit(rclient, Keys(namespace))
    before = snapshot(rclient, namespace)
    for _ in range(tight.auth_fail_rate):
        assert (await handshake_status(pod, "r1", "wrong")).status == 401
    answer = await handshake_status(pod, "r1", "wrong")
    refused(answer, "HTTP/1.1 429 Too Many Requests")
    assert 1 <= int(answer.header("Retry-After") or 0) <= 60
    # the source is refused whatever it sends, the right token included
    assert (await handshake_status(pod, "r1", token)).status == 429
    assert snapshot(rclient, namespace) == before


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    launch, tight, settings, rclient, keys
):
    behind_proxy = dataclasses.replace(tight, trusted_proxies="127.0.0.1")
    pod = await launch(behind_proxy)
    token = add_runner(settings, "r1", [SPEC])
    attacker = {"X-Forwarded-For": "198.51.100.9"}
    for _ in range(tight.auth_fail_rate):
        assert (await handshake_status(pod, "r1", "wrong", **attacker)).status == 401
    assert (await handshake_status(pod, "r1", "wrong", **attacker)).status == 429
    # a forged left part does not help the attacker; another client is not affected
    forged = {"X-Forwarded-For": "192.0.2.1, 198.51.100.9"}
    assert (await handshake_status(pod, "r1", "wrong", **forged)).status == 429
    ws = await websockets.connect(
        pod.ws_url("r1"),
        additional_headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "192.0.2.1"},
        open_timeout=5,
    )
    runner = RawRunner(ws, "r1")
    job_id = submit(rclient, keys)
    assert (await take_job(runner))["job"] == job_id
    await runner.close()


async def test_without_trusted_proxies_forwarded_for_is_ignored(launch, tight, settings):
    pod = await launch(tight)
    add_runner(settings, "r1", [SPEC])
    for i in range(tight.auth_fail_rate):
        spoofed = {"X-Forwarded-For": f"198.51.100.{i}"}
        assert (await handshake_status(pod, "r1", "wrong", **spoofed)).status == 401
    spoofed = {"X-Forwarded-For": "198.51.100.200"}
    assert (await handshake_status(pod, "r1", "wrong", **spoofed)).status == 429


# -- logging ----------------------------------------------------------------------------------


async def test_refused_handshakes_log_no_error(pod, settings):
    add_runner(settings, "r1", [SPEC])
    with pod_logs() as logs:
        for _ in range(40):  # past the failure rate: 401s, then 429s
            assert (await handshake_status(pod, "r1", "wrong")).status in (401, 429)
        long_line = upgrade_head(extra=[("X-Long", "y" * 9000)])
        assert (await exchange(pod.port, long_line, timeout=ANSWER_BOUND)).status == 431
    assert logs.at_least(logging.WARNING) == []
    assert any("refused" in message for message in logs.at_least(logging.INFO))


async def test_a_token_in_the_query_string_never_reaches_the_log(pod, settings):
    token = add_runner(settings, "r1", [SPEC])
    secret = f"token={token}"
    path = f"/v1/runners/r1/channel?{secret}"
    plain = f"GET /healthz?{secret} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    with pod_logs() as logs:
        answer = await exchange(pod.port, upgrade_head(path=path), timeout=ANSWER_BOUND)
        assert answer.status == 401
        ws = await websockets.connect(
            f"ws://127.0.0.1:{pod.port}{path}",
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=5,
        )
        await ws.close()
        assert (await exchange(pod.port, plain.encode(), timeout=ANSWER_BOUND)).status == 200
    messages = logs.at_least(logging.DEBUG)
    assert any("/v1/runners/r1/channel?<query removed>" in m for m in messages), messages
    assert not [m for m in messages if token in m]


# -- good runners during a flood --------------------------------------------------------------


async def flood(port: int, stop: asyncio.Event, tally: dict[int, int]) -> None:
    """Bad handshakes of every kind, one after another, until ``stop``."""
    attacker = ("X-Forwarded-For", "198.51.100.7")
    kinds = [
        upgrade_head("r1", "wrong", extra=[attacker]),
        upgrade_head("ghost", "wrong", extra=[attacker]),
        upgrade_head(extra=[attacker, ("X-Long", "y" * 9000)]),
        upgrade_head(extra=[attacker, *((f"X-H{i}", "v") for i in range(100))]),
        upgrade_head(end=False),  # held: answered 408 at the deadline
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
    ]
    i = 0
    while not stop.is_set():
        answer = await exchange(port, kinds[i % len(kinds)], timeout=ANSWER_BOUND)
        status = answer.status if answer.data.startswith(b"HTTP/1.1 ") else 0
        tally[status] = tally.get(status, 0) + 1
        i += 1


async def test_good_runners_keep_getting_jobs_during_a_flood_of_bad_handshakes(
    launch, settings, rclient, keys
):
    """Connected runners keep taking jobs, and a new runner still connects, while 40 clients
    send bad handshakes non-stop (from behind a trusted proxy, so the attacker has its own
    address and the runners theirs)."""
    pod = await launch(
        dataclasses.replace(
            settings, handshake_timeout=0.5, auth_fail_rate=5, trusted_proxies="127.0.0.1"
        )
    )
    tokens = {f"good{i}": add_runner(settings, f"good{i}", [SPEC]) for i in range(3)}
    runners = [await connect(pod, name, token) for name, token in list(tokens.items())[:2]]
    stop = asyncio.Event()
    tally: dict[int, int] = {}
    flooders = [asyncio.create_task(flood(pod.port, stop, tally)) for _ in range(40)]
    try:
        await eventually(lambda: sum(tally.values()) >= 200, timeout=30, what="flood under way")
        for _ in range(5):
            for runner in runners:
                job_id = submit(rclient, keys)
                job = await take_job(runner, timeout=10)
                assert job["job"] == job_id
                await runner.send("completed", job=job_id, attempt=1, exit_code=0, results=None)
                assert (await runner.expect("ack", timeout=10))["job"] == job_id
        ws = await websockets.connect(
            pod.ws_url("good2"),
            additional_headers={
                "Authorization": f"Bearer {tokens['good2']}",
                "X-Forwarded-For": "192.0.2.50",
            },
            open_timeout=10,
        )
        newcomer = RawRunner(ws, "good2")
        job_id = submit(rclient, keys)
        assert (await take_job(newcomer, timeout=10))["job"] == job_id
        runners.append(newcomer)
    finally:
        stop.set()
        await asyncio.gather(*flooders)
        for runner in runners:
            await runner.close()
    assert {400, 401, 408, 429, 431} <= set(tally), tally


async def test_a_pipelined_oversized_head_is_refused_and_nothing_after_it_is_written(pod):
    """A complete request followed by an oversized one in the same bytes: the whole chunk is
    scanned before the parser sees it, so only the refusal goes out, and no error is logged."""
    good = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    bad = b"GET /healthz HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n"
    with pod_logs() as logs:
        answer = await exchange(pod.port, good + bad, timeout=ANSWER_BOUND)
    refused(answer, "HTTP/1.1 431 Request Header Fields Too Large")
    assert answer.data.count(b"HTTP/1.1 ") == 1
    assert logs.at_least(logging.WARNING) == []
