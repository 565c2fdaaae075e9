"""The HAProxy example (deploy/haproxy/haproxy.cfg) is a valid config for Debian's haproxy, and
the test kit's rendering of it for loopback ports keeps every setting but the addresses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.scaleout.haproxykit import EXAMPLE, HAVE_HAPROXY, parse_stat, render

needs_haproxy = pytest.mark.skipif(
    not HAVE_HAPROXY, reason="haproxy is not installed (apt-get install -y haproxy)"
)


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=60
    )


def settings_lines(text: str) -> list[str]:
    """Every non-comment line but those ``render`` replaces."""
    replaced = ("bind ", "server ", "stats socket ")
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith(("#", *replaced))]


@needs_haproxy
def test_the_example_config_is_valid():
    result = check(EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr
    # the only warnings: the example's pod names do not resolve on this machine
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert all("could not resolve address" in line for line in warnings), warnings


@needs_haproxy
def test_the_rendered_config_is_valid_without_warnings(tmp_path):
    path = tmp_path / "haproxy.cfg"
    path.write_text(render(EXAMPLE.read_text(), 18000, [18001, 18002, 18003], tmp_path / "s"))
    result = check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_rendering_keeps_every_setting_and_replaces_only_addresses(tmp_path):
    example = EXAMPLE.read_text()
    text = render(example, 18000, [18001, 18002], tmp_path / "admin.sock")
    assert settings_lines(text) == settings_lines(example)
    assert "    bind 127.0.0.1:18000" in text.splitlines()
    assert [line.strip() for line in text.splitlines() if line.strip().startswith("server ")] == [
        "server pod1 127.0.0.1:18001 check",
        "server pod2 127.0.0.1:18002 check",
    ]
    assert f"stats socket {tmp_path / 'admin.sock'} mode 600 level admin" in text


def test_the_example_has_the_settings_long_lived_sockets_need():
    lines = settings_lines(EXAMPLE.read_text())
    for wanted in (
        "balance leastconn",
        "option httpchk GET /readyz",
        "http-check expect status 200",
        "timeout tunnel 1h",
        "timeout client-fin 5s",
        "option redispatch 1",
        "retry-on conn-failure empty-response 503",
        "option forwardfor",
    ):
        assert wanted in lines, wanted


def test_a_config_without_server_lines_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no server line"):
        render("defaults\n    mode http\n", 1, [2], tmp_path / "s")


def test_show_stat_csv_is_parsed_by_its_header():
    text = "# pxname,svname,scur,status\npods,pod1,3,UP\npods,BACKEND,3,UP\n\n"
    assert parse_stat(text) == [
        {"pxname": "pods", "svname": "pod1", "scur": "3", "status": "UP"},
        {"pxname": "pods", "svname": "BACKEND", "scur": "3", "status": "UP"},
    ]
    assert parse_stat("Unknown command\n") == []
