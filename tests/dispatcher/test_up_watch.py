"""`up`'s job log survives Redis going away at any moment, also before its first read (the stream
cursor): it says so in one line each way and goes on. Real Redis behind a real TCP proxy."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import pytest

from dispatcher import up
from dispatcher.client import Client
from dispatcher.settings import Settings
from tests.netkit import TcpProxy


def test_the_first_cursor_waits_out_an_outage(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    target = urlsplit(settings.redis_url)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 6379))
    url = f"redis://127.0.0.1:{proxy.port}/0"  # down: connections refused, as Redis restarting
    got: list[str] = []
    with Client(Settings(redis_url=url, namespace=settings.namespace)) as client:
        thread = threading.Thread(target=lambda: got.append(up.first_cursor(client, url)))
        thread.start()
        try:
            thread.join(1.5)  # part of the scenario: the outage lasts a while
            assert thread.is_alive() and not got
            proxy.up()
            thread.join(30)
        finally:
            proxy.down()
    assert got == ["0"]  # the namespace has no events yet
    printed = capsys.readouterr().out
    assert "lost Redis at" in printed and "answers again" in printed, printed
