"""Redis URLs: pure parsing, fed strings; a bad URL is one line that never shows the password."""

from __future__ import annotations

import pytest

from dispatcher import redisconn
from dispatcher.errors import ConfigError
from dispatcher.redisurl import parse
from dispatcher.settings import Settings


def test_single_server_urls_pass_through() -> None:
    for url in (
        "redis://127.0.0.1:6379/0",
        "redis://:secret@redis.internal/3",
        "rediss://user:secret@redis.internal:6380/0?ssl_cert_reqs=none",
        "unix:///run/redis.sock?db=2",
    ):
        target = parse(url)
        assert (target.kind, target.url) == ("single", url)
    assert parse("rediss://h:1").tls and not parse("redis://h:1").tls


def test_sentinel_urls() -> None:
    target = parse(
        "redis+sentinel://user:p%40ss@s1:26379,s2:26380,[::1]/mymaster/2?sentinel_password=x"
    )
    assert target.sentinel and not target.tls
    assert target.hosts == (("s1", 26379), ("s2", 26380), ("::1", 26379))
    assert (target.service, target.db) == ("mymaster", 2)
    assert (target.username, target.password) == ("user", "p@ss")
    assert target.options == {"sentinel_password": "x"}
    assert parse("rediss+sentinel://s1/svc").tls
    assert parse("redis+sentinel://s1:1/svc").db == 0
    assert "p@ss" not in target.describe() and target.describe().startswith("redis+sentinel://s1")


def test_cluster_urls() -> None:
    target = parse("redis+cluster://:pw@n1:7000,n2:7001,n3")
    assert target.cluster
    assert target.hosts == (("n1", 7000), ("n2", 7001), ("n3", 6379))
    assert target.password == "pw" and target.username is None
    assert parse("rediss+cluster://n1:7000").tls
    assert parse("redis+cluster://n1:7000/0").cluster


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:6379", "'localhost:6379' is not a Redis URL: expected redis://"),
        ("user:secret@localhost:6379", "'(hidden)' is not a Redis URL"),
        ("http://h:1", "unknown scheme 'http'"),
        ("redis://h:99999/0", "port"),
        ("redis://h:1/x", "database 'x'"),
        ("redis:///0", "no host"),
        ("redis+sentinel://s1:26379", "no service name"),
        ("redis+sentinel://s1:26379/svc/x", "database 'x'"),
        ("redis+sentinel://s1:26379/svc/1/2", "too many path segments"),
        ("redis+sentinel://s1:abc/svc", "port of 's1' is not a number"),
        ("redis+cluster://n1:7000,,n2:7001", "empty host"),
        ("redis+cluster://:secret@n1:0", "out of range"),
        ("redis+cluster://n1:7000/3", "no database number"),
    ],
)
def test_a_bad_url_is_one_line(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(url)
    message = str(caught.value)
    assert says in message and "\n" not in message and "secret" not in message
    with pytest.raises(ConfigError):
        Settings(redis_url=url)  # every process reads its URL through Settings


def test_clients_are_of_the_kind_the_url_names() -> None:
    # building a client connects to nothing yet (except a cluster client, which asks its seeds)
    single = redisconn.sync_client("redis://127.0.0.1:1/0")
    assert single.connection_pool.connection_kwargs["port"] == 1
    primary = redisconn.sync_client("redis+sentinel://127.0.0.1:1/svc/4")
    assert type(primary.connection_pool).__name__ == "SentinelConnectionPool"
    assert primary.connection_pool.connection_kwargs["db"] == 4
    asyncio_primary = redisconn.async_client("redis+sentinel://127.0.0.1:1/svc", 4, 1.0)
    assert type(asyncio_primary.connection_pool).__name__ == "SentinelConnectionPool"
