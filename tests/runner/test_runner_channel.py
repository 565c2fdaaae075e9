"""URL building, refusal classification and Retry-After parsing (no network)."""

from __future__ import annotations

import email.utils

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from runner.channel import channel_url, connect_failure, parse_retry_after
from runner.events import ConnectFailed


@pytest.mark.parametrize(
    ("base", "runner", "url"),
    [
        ("http://d:8080", "r1", "ws://d:8080/v1/runners/r1/channel"),
        ("https://d.example", "r1", "wss://d.example/v1/runners/r1/channel"),
        ("https://d.example/dispatch/", "r1", "wss://d.example/dispatch/v1/runners/r1/channel"),
        ("http://d:1?x=1#y", "gpu box/2", "ws://d:1/v1/runners/gpu%20box%2F2/channel"),
        ("ws://d:1", "r", "ws://d:1/v1/runners/r/channel"),
    ],
)
def test_channel_url(base: str, runner: str, url: str) -> None:
    assert channel_url(base, runner) == url


@pytest.mark.parametrize(
    ("base", "runner"), [("ftp://d", "r"), ("d:8080", "r"), ("http://", "r"), ("http://d", "")]
)
def test_bad_url_or_name_is_refused(base: str, runner: str) -> None:
    with pytest.raises(ValueError):
        channel_url(base, runner)


def refused(status: int, **headers: str) -> InvalidStatus:
    return InvalidStatus(Response(status, "", Headers(**headers)))


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_is_flagged(status: int) -> None:
    assert connect_failure(refused(status), 0.0) == ConnectFailed(
        f"HTTP {status}", auth_refused=True
    )


def test_rate_limit_carries_retry_after() -> None:
    failure = connect_failure(refused(429, **{"Retry-After": "17"}), 0.0)
    assert failure.retry_after == 17.0 and not failure.auth_refused


def test_other_failures_are_plain() -> None:
    assert connect_failure(refused(502), 0.0) == ConnectFailed(
        "HTTP 502 refused the WebSocket upgrade"
    )
    assert connect_failure(ConnectionRefusedError(111, "refused"), 0.0).error.startswith(
        "ConnectionRefusedError"
    )


def test_retry_after_as_a_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(header, now) == 90.0
    assert parse_retry_after(email.utils.formatdate(now - 5, usegmt=True), now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-3"])
def test_unreadable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, 0.0) is None
