"""Redis URLs, parsed in one place (pure: no I/O; ``redisconn`` builds the clients).

- ``redis://[user:password@]HOST[:PORT][/DB][?options]`` and ``rediss://`` (TLS): one server.
- ``redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB][?options]``: ask the
  Sentinels for the current primary of SERVICE (``rediss+sentinel://``: TLS to the data nodes).
  The user and password are the data nodes'; ``sentinel_password=`` (a query option) is the
  Sentinels' own when they have one.
- ``redis+cluster://[user:password@]HOST:PORT[,HOST:PORT...][?options]``: a Redis Cluster, any
  of its nodes as seeds (``rediss+cluster://``: TLS). No database number: a cluster has only 0.

A bad URL raises ``ConfigError`` with one line naming what is wrong (never the password).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from dispatcher.errors import ConfigError

SCHEMES = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where a Redis is and how to reach it."""

    kind: str  # 'single', 'sentinel' or 'cluster'
    url: str  # the URL as given (for 'single', handed to redis-py as it is)
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()  # sentinels or cluster seeds
    service: str = ""  # the Sentinel service name
    db: int = 0
    username: str | None = None
    password: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # the query string

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"

    @property
    def sentinel(self) -> bool:
        return self.kind == "sentinel"

    def describe(self) -> str:
        """The URL without credentials (for logs and errors)."""
        if self.kind == "single":
            parts = urlsplit(self.url)
            host = parts.hostname or parts.path or ""
            port = f":{parts.port}" if parts.port else ""
            return f"{parts.scheme}://{host}{port}"
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        scheme = ("rediss+" if self.tls else "redis+") + self.kind
        tail = f"/{self.service}/{self.db}" if self.sentinel else ""
        return f"{scheme}://{hosts}{tail}"


def _fail(url: str, why: str) -> ConfigError:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    shown = f"a {scheme}:// URL" if scheme in SCHEMES else "Redis URL"
    return ConfigError(f"{shown}: {why}")


def _hosts(url: str, netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            raise _fail(url, "empty host in the host list")
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise _fail(url, f"no host in {item!r}")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise _fail(url, f"port of {host!r} is not a number") from None
        if not 0 < port < 65536:
            raise _fail(url, f"port {port} of {host!r} is out of range")
        hosts.append((host, port))
    return tuple(hosts)


def parse(url: str) -> RedisTarget:
    """Parse ``url`` (see the module docstring) or raise a one-line ``ConfigError``."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        shown = "(hidden)" if "@" in url else url  # never a password
        raise ConfigError(
            f"{shown!r} is not a Redis URL: expected redis://, rediss://, "
            "redis+sentinel://HOST:PORT[,...]/SERVICE or redis+cluster://HOST:PORT[,...]"
        )
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise _fail(
            url,
            f"unknown scheme {scheme!r}: expected redis://, rediss://, redis+sentinel:// or "
            "redis+cluster://",
        )
    kind, tls = SCHEMES[scheme]
    if kind == "single":
        parts = urlsplit(url)
        if scheme != "unix":
            try:
                parts.port  # noqa: B018 (validates)
            except ValueError:
                raise _fail(url, "the port is not a number from 1 to 65535") from None
            if not parts.hostname:
                raise _fail(url, "no host")
            db_text = parts.path.strip("/")
            if db_text and not db_text.isdigit():
                raise _fail(url, f"database {db_text!r} is not a number")
        return RedisTarget(kind, url, tls=tls)
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo, hostpart = "", rest
    hostpart, _, query = hostpart.partition("?")
    netloc, _, path = hostpart.partition("/")
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    options = dict(parse_qsl(query, keep_blank_values=True))
    segments = [s for s in path.split("/") if s]
    if kind == "sentinel":
        hosts = _hosts(url, netloc, DEFAULT_SENTINEL_PORT)
        if not segments:
            raise _fail(url, "no service name: redis+sentinel://HOST:PORT[,...]/SERVICE[/DB]")
        if len(segments) > 2:
            raise _fail(url, "too many path segments: expected /SERVICE[/DB]")
        db_text = segments[1] if len(segments) == 2 else "0"
        if not db_text.isdigit():
            raise _fail(url, f"database {db_text!r} is not a number")
        return RedisTarget(
            kind,
            url,
            tls=tls,
            hosts=hosts,
            service=unquote(segments[0]),
            db=int(db_text),
            username=username,
            password=password,
            options=options,
        )
    hosts = _hosts(url, netloc, DEFAULT_PORT)
    if segments and segments != ["0"]:
        raise _fail(url, "a cluster has no database number (only 0)")
    return RedisTarget(
        kind, url, tls=tls, hosts=hosts, username=username, password=password, options=options
    )


def is_cluster(url: str) -> bool:
    return parse(url).cluster
