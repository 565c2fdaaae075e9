"""The handshake's pure logic, fed inputs: head limits, X-Forwarded-For, rate windows, redaction."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.errors import ConfigError
from dispatcher.forwarded import client_address, parse_trusted
from dispatcher.headlimits import Complete, Exceeded, HeadLimits, HeadScanner, Incomplete
from dispatcher.logredact import QueryStringFilter, strip_query
from dispatcher.ratelimit import FailureLimiter, RefusalDigest, source_key
from dispatcher.settings import Settings

# derandomized: the same examples on every run
repeatable = settings(derandomize=True, database=None, deadline=None)

LIMITS = HeadLimits(max_line=1024, max_bytes=4096, max_headers=10)


def head(*headers: str, target: str = "/x") -> bytes:
    return ("\r\n".join([f"GET {target} HTTP/1.1", *headers]) + "\r\n\r\n").encode()


def feed_all(data: bytes, chunk: int, limits: HeadLimits = LIMITS):
    """Feed ``data`` in chunks of ``chunk`` bytes; the first verdict that is not Incomplete,
    with the absolute offset of a Complete."""
    scanner = HeadScanner(limits)
    for start in range(0, len(data), chunk):
        verdict = scanner.feed(data[start : start + chunk])
        if isinstance(verdict, Complete):
            return Complete(start + verdict.end)
        if isinstance(verdict, Exceeded):
            return verdict
    return Incomplete()


# -- head limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 7, 100, 100_000])
def test_a_head_within_the_limits_completes_where_its_empty_line_ends(chunk):
    data = head("Host: a", "X: " + "y" * 1000) + b"GET /next"
    assert feed_all(data, chunk) == Complete(data.index(b"\r\n\r\n") + 4)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (head(target="/" + "a" * 1024), Exceeded(414, "request line too long")),
        (head("X: " + "y" * 1022), Exceeded(431, "header line too long")),
        (head(*[f"H{i}: v" for i in range(11)]), Exceeded(431, "too many header fields")),
        (head(*[f"H{i}: " + "v" * 900 for i in range(5)]), Exceeded(431, "request head too large")),
        # a request line that never ends is cut as soon as it is over the line limit
        (b"GET /" + b"a" * 5000, Exceeded(414, "request line too long")),
        # so is a header line, and a head that never ends at the byte limit
        (b"GET / HTTP/1.1\r\nX: " + b"y" * 5000, Exceeded(431, "header line too long")),
        (b"GET / HTTP/1.1\r\n" + (b"X: " + b"y" * 397 + b"\r\n") * 10 + b"z" * 800,
         Exceeded(431, "request head too large")),
    ],
    ids=["long-target", "long-header", "many-headers", "big-head", "endless-target",
         "endless-header", "endless-head"],
)  # fmt: skip
@pytest.mark.parametrize("chunk", [1, 3, 512, 100_000])
def test_a_head_over_a_limit_is_refused_with_its_status(data, expected, chunk):
    assert feed_all(data, chunk) == expected


def test_exactly_at_the_limits_is_accepted():
    line = "X: " + "y" * (LIMITS.max_line - 3)
    assert len(line) == LIMITS.max_line
    data = head(line)
    assert feed_all(data, 5) == Complete(len(data))
    data = head(*[f"H{i}: v" for i in range(LIMITS.max_headers)])
    assert feed_all(data, 5) == Complete(len(data))


def test_bare_lf_line_ends_and_leading_empty_lines_are_understood():
    data = b"\r\n\nGET / HTTP/1.1\nHost: a\n\n"
    assert feed_all(data, 1) == Complete(len(data))


def test_leading_empty_lines_count_toward_the_byte_limit():
    assert feed_all(b"\r\n" * 3000, 100) == Exceeded(414, "request line too long")


@repeatable
@given(st.binary(max_size=20_000), st.integers(min_value=1, max_value=5000))
def test_any_input_is_decided_within_the_byte_limit(data, chunk):
    """Whatever arrives, the scanner decides before holding more than max_bytes of it."""
    scanner = HeadScanner(LIMITS)
    seen = 0
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        verdict = scanner.feed(piece)
        if not isinstance(verdict, Incomplete):
            return
        seen += len(piece)
        assert seen <= LIMITS.max_bytes


@repeatable
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z-]{1,20}", fullmatch=True), st.text("abc ;=", max_size=50)
        ),
        max_size=10,
    ),
    st.integers(min_value=1, max_value=64),
)
def test_every_head_within_the_limits_completes_at_its_end(headers, chunk):
    data = head(*[f"{name}: {value}" for name, value in headers])
    assert feed_all(data, chunk) == Complete(len(data))


def test_head_limits_refuse_nonsense():
    with pytest.raises(ValueError):
        HeadLimits(max_line=100)
    with pytest.raises(ValueError):
        HeadLimits(max_line=8192, max_bytes=4096)


# -- X-Forwarded-For --------------------------------------------------------------------------

TRUSTED = parse_trusted("10.0.0.0/8, 192.0.2.7, fd00::/8")


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("198.51.100.1", ["203.0.113.5"], "198.51.100.1"),  # peer not a proxy: header ignored
        ("10.1.2.3", ["203.0.113.5"], "203.0.113.5"),
        ("10.1.2.3", [], "10.1.2.3"),  # a trusted proxy that sent no header
        ("10.1.2.3", ["1.1.1.1, 203.0.113.5, 10.9.9.9"], "203.0.113.5"),  # left part is forged
        ("10.1.2.3", ["1.1.1.1", "203.0.113.5"], "203.0.113.5"),  # several headers, in order
        ("10.1.2.3", ["10.0.0.1, 192.0.2.7"], "10.0.0.1"),  # all trusted: the farthest
        ("10.1.2.3", ["203.0.113.5, garbage"], "10.1.2.3"),  # garbage from the proxy itself
        ("10.1.2.3", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("10.1.2.3", ["203.0.113.5:1234"], "203.0.113.5"),
        ("::ffff:10.1.2.3", ["203.0.113.5"], "203.0.113.5"),  # IPv4-mapped peer
        ("fd00::1", ["2001:db8::9"], "2001:db8::9"),
        (None, ["203.0.113.5"], "unknown"),
    ],
)
def test_the_client_address_believes_only_trusted_proxies(peer, xff, expected):
    assert client_address(peer, xff, TRUSTED) == expected


def test_no_trusted_proxies_never_reads_the_header():
    assert client_address("10.1.2.3", ["203.0.113.5"], ()) == "10.1.2.3"


@pytest.mark.parametrize("spec", ["10.0.0.0/33", "example.org", "10.0.0.1, nope"])
def test_a_bad_trusted_proxy_setting_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        Settings(trusted_proxies=spec)


def test_trusted_proxies_parse_addresses_and_networks():
    assert Settings(trusted_proxies=" 127.0.0.1 , ::1,10.0.0.0/8").trusted_proxy_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.0.0.0/8"),
    )


@pytest.mark.parametrize(
    "values",
    [
        {"handshake_timeout": 0},
        {"max_head_line": 9000},
        {"max_head_line": 100},
        {"max_head_bytes": 1000},
        {"max_headers": 200},
        {"max_pending_handshakes": 0},
        {"auth_fail_rate": -1},
    ],
)
def test_handshake_settings_out_of_range_are_refused(values):
    with pytest.raises(ConfigError):
        Settings(**values)


def test_handshake_settings_come_from_the_environment():
    settings = Settings.from_env(
        {
            "DISPATCHER_HANDSHAKE_TIMEOUT": "2.5",
            "DISPATCHER_AUTH_FAIL_RATE": "7",
            "DISPATCHER_TRUSTED_PROXIES": "10.0.0.0/8",
            "DISPATCHER_MAX_PENDING_HANDSHAKES": "9",
        }
    )
    assert settings.handshake_timeout == 2.5
    assert settings.auth_fail_rate == 7
    assert settings.max_pending_handshakes == 9
    assert settings.trusted_proxy_networks == (ipaddress.ip_network("10.0.0.0/8"),)


# -- failed authentications per source --------------------------------------------------------


def test_failures_up_to_the_rate_are_allowed_then_refused_until_the_window_ends():
    limiter = FailureLimiter(3)
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after("192.0.2.1", t) is None
        limiter.failed("192.0.2.1", t)
    assert limiter.retry_after("192.0.2.1", 2.5) == 58  # the window opened at 0
    assert limiter.retry_after("192.0.2.1", 59.5) == 1
    assert limiter.retry_after("192.0.2.2", 2.5) is None  # another source is not affected
    assert limiter.retry_after("192.0.2.1", 60.0) is None  # a new window
    assert len(limiter) == 0


def test_ipv6_sources_are_counted_per_64():
    limiter = FailureLimiter(2)
    limiter.failed("2001:db8:1:2::1", 0)
    limiter.failed("2001:db8:1:2:ffff::9", 0)
    assert limiter.retry_after("2001:db8:1:2::77", 1) == 59
    assert limiter.retry_after("2001:db8:1:3::1", 1) is None
    assert source_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_key("192.0.2.1") == "192.0.2.1"
    assert source_key("unknown") == "unknown"


def test_the_table_of_sources_is_bounded_oldest_forgotten_first():
    limiter = FailureLimiter(1, max_sources=3)
    for i in range(5):
        limiter.failed(f"192.0.2.{i}", float(i))
    assert len(limiter) == 3
    assert limiter.retry_after("192.0.2.0", 5) is None  # forgotten
    assert limiter.retry_after("192.0.2.4", 5) == 59


def test_rate_zero_turns_the_limit_off():
    limiter = FailureLimiter(0)
    for t in range(100):
        limiter.failed("192.0.2.1", float(t) / 100)
    assert limiter.retry_after("192.0.2.1", 1) is None
    assert len(limiter) == 0


# -- refusal log lines ------------------------------------------------------------------------


def test_a_flood_of_refusals_costs_one_line_per_interval():
    digest = RefusalDigest(interval=10)
    assert digest.note("431 header line too long", 0.0) is True
    assert [digest.note("431 header line too long", t / 10) for t in range(1, 50)] == [False] * 49
    assert digest.note("408 timeout", 6.0) is False
    assert digest.summary(10.0) == (
        "50 more handshake refusals held back: 408 timeout x1, 431 header line too long x49"
    )
    assert digest.summary(10.0) is None
    assert digest.note("431 header line too long", 12.0) is False  # still in the new interval
    digest.summary(20.0)
    assert digest.note("431 header line too long", 31.0) is True  # after a quiet interval


# -- query strings out of the logs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/v1/runners/a/channel?token=s3cret", "/v1/runners/a/channel?<query removed>"),
        ('1.2.3.4 - "WebSocket /x?t=s3cret" 401', '1.2.3.4 - "WebSocket /x?<query removed>" 401'),
        ("/healthz", "/healthz"),
        ("no path? here", "no path? here"),
    ],
)
def test_query_strings_are_cut_from_paths(text, expected):
    assert strip_query(text) == expected


def test_the_filter_redacts_record_arguments():
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, "", 0, '%s - "WebSocket %s" %d',
        ("1.2.3.4:5", "/v1/runners/a/channel?token=s3cret", 401), None,
    )  # fmt: skip
    assert QueryStringFilter().filter(record)
    assert "s3cret" not in record.getMessage()
    assert (
        record.getMessage() == '1.2.3.4:5 - "WebSocket /v1/runners/a/channel?<query removed>" 401'
    )
