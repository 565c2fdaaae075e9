"""The pod's front door (``dispatcher.frontdoor``) against a real pod over raw TCP: the probes
over h11 (keep-alive, bodies framed, HEAD), bad requests refused 400 with no warning, and the
WebSocket hand-over; plus the pure upgrade check (``dispatcher.headlimits.wants_websocket``)."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from dispatcher.headlimits import wants_websocket
from tests.dispatcher.logkit import pod_logs
from tests.dispatcher.rawhttp import exchange, upgrade_head
from tests.dispatcher.support import SPEC
from tests.podkit import add_runner

BOUND = 10.0  # generous: only "answered and closed", never how fast


def get(path: str = "/healthz", *, close: bool = False, extra: str = "") -> bytes:
    last = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}{last}\r\n".encode()


def statuses(data: bytes) -> list[int]:
    """Every status line's code (a body without a line end runs into the next status line)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


async def test_pipelined_probes_are_answered_in_order_on_one_connection(pod):
    answer = await exchange(pod.port, get() + get("/nowhere") + get(close=True), timeout=BOUND)
    assert statuses(answer.data) == [200, 404, 200]


async def test_a_request_body_is_framed_not_scanned_as_a_head(pod):
    """A body holding an empty line is the body, not the end of a next head."""
    body = b"x\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"
    post = (
        b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    answer = await exchange(pod.port, post + get(close=True), timeout=BOUND)
    assert statuses(answer.data) == [405, 200]


async def test_a_head_request_gets_no_body(pod):
    answer = await exchange(
        pod.port, b"HEAD /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", timeout=BOUND
    )
    assert statuses(answer.data) == [200]
    assert answer.data.endswith(b"\r\n\r\n")


async def test_http_10_probes_are_answered_and_closed(pod):
    """What HAProxy's ``option httpchk GET /readyz`` sends."""
    answer = await exchange(pod.port, b"GET /readyz HTTP/1.0\r\n\r\n", timeout=BOUND)
    assert answer.status_line.split()[1] == "200"


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host (RFC 9112, 3.2)
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["garbage", "no-host", "bad-length", "bad-chunk"],
)
async def test_a_bad_request_is_refused_400_without_a_warning(pod, data):
    with pod_logs() as logs:
        answer = await exchange(pod.port, data, timeout=BOUND)
    assert answer.status_line == "HTTP/1.1 400 Bad Request", answer.data[:200]
    assert answer.header("Connection") == "close"
    assert logs.at_least(logging.WARNING) == []


async def test_an_unsupported_upgrade_is_served_as_plain_http(pod):
    extra = "Connection: upgrade\r\nUpgrade: h2c\r\n"
    with pod_logs() as logs:
        answer = await exchange(pod.port, get(extra=extra), timeout=BOUND)
    assert statuses(answer.data)[:1] == [200]
    assert logs.at_least(logging.WARNING) == []


async def test_an_upgrade_after_a_probe_on_the_same_connection_is_handed_over(pod, settings):
    token = add_runner(settings, "r1", [SPEC])
    data = get() + upgrade_head("r1", token)
    reader_data = await _until(pod.port, data, b"HTTP/1.1 101")
    assert statuses(reader_data)[:2] == [200, 101]


async def test_an_upgrade_without_connection_upgrade_is_refused_by_the_websocket_parser(pod):
    head = upgrade_head().replace(b"Connection: Upgrade\r\n", b"")
    answer = await exchange(pod.port, head, timeout=BOUND)
    assert answer.status in (400, 426), answer.data[:200]


async def _until(port: int, data: bytes, marker: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        received = b""
        while marker not in received:
            chunk = await asyncio.wait_for(reader.read(65536), BOUND)
            assert chunk, received
            received += chunk
        return received
    finally:
        writer.close()


# -- the pure part --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (upgrade_head(), True),
        (b"GET / HTTP/1.1\r\nupgrade: WebSocket\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nUpgrade: h2c, websocket\r\n\r\n", True),
        (b"GET / HTTP/1.1\nUpgrade:websocket\n\n", True),
        (b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nX-Upgrade: websocket\r\n\r\n", False),
        (b"GET /?upgrade:websocket HTTP/1.1\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nUpgrade: websockets\r\n\r\n", False),
        (b"", False),
    ],
)
def test_only_an_upgrade_field_listing_websocket_goes_to_the_websocket_protocol(head, expected):
    assert wants_websocket(head) is expected
