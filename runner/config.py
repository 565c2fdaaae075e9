"""The agent's settings, built once by the CLI (or a test) and passed explicitly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from dispatch_protocol.messages import DEFAULT_POLL_TIMEOUT
from runner.channel import channel_url
from runner.executor import DEFAULT_KILL_GRACE, DEFAULT_OUTPUT_CAP
from runner.failover import DEFAULT_HEALTHY_SESSION
from runner.jobuser import JobUser

TOKEN_ENV = "DISPATCH_RUNNER_TOKEN"
DEFAULT_STATE_DIR = Path(".dispatch-runner")
DEFAULT_DRAIN_TIMEOUT = 600.0


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``Agent`` needs; times in seconds. The token never appears in ``repr``."""

    urls: tuple[str, ...]  # http(s)://HOST:PORT of each dispatcher pod (a path prefix is kept)
    runner: str
    token: str = field(repr=False)
    state_dir: Path = DEFAULT_STATE_DIR
    work_dir: Path | None = None  # jobs run in <work_dir>/<runner>/; default <spool dir>/work
    poll_timeout: int = DEFAULT_POLL_TIMEOUT
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    kill_grace: float = DEFAULT_KILL_GRACE
    output_cap: int = DEFAULT_OUTPUT_CAP
    base_env: Mapping[str, str] = field(default_factory=dict, repr=False)  # the jobs' environment
    open_timeout: float = 10.0
    ack_timeout: float = 30.0
    poll_margin: float = 15.0
    max_auth_failures: int = 10
    job_user: JobUser | None = None  # run jobs as this user (the agent must be root)
    healthy_session: float = DEFAULT_HEALTHY_SESSION  # a connection this long resets the back-off
    once: bool = False  # take one job, deliver its result, exit (dispatch-runner --once)

    def __post_init__(self) -> None:
        check_urls(self.urls, self.runner)

    @property
    def channel_urls(self) -> tuple[str, ...]:
        """The channel's WebSocket URL at each dispatcher URL, in the order given."""
        return tuple(channel_url(url, self.runner) for url in self.urls)

    @property
    def spool_dir(self) -> Path:
        # One directory per runner name: a result held for one name is never sent as another's.
        return self.state_dir / quote(self.runner, safe="")

    @property
    def job_dir(self) -> Path:
        # One directory per runner name here too: a restarted agent removes what its own earlier
        # life left, never the work directory of another agent's live job in a shared --work-dir.
        if self.work_dir is not None:
            return self.work_dir / quote(self.runner, safe="")
        return self.spool_dir / "work"


def split_urls(values: Sequence[str]) -> tuple[str, ...]:
    """The URLs of repeated ``--url`` options, each of which may be a comma-separated list."""
    urls = tuple(url.strip() for value in values for url in value.split(","))
    if "" in urls:
        raise ValueError(f"an empty dispatcher URL in {','.join(values)!r}")
    return urls


def check_urls(urls: Sequence[str], runner: str) -> None:
    """Raise ``ValueError`` (one line) unless ``urls`` is a non-empty list of distinct, usable
    dispatcher URLs."""
    if not urls:
        raise ValueError("at least one dispatcher URL is needed")
    seen: set[str] = set()
    for url in urls:
        channel = channel_url(url, runner)
        if channel in seen:
            raise ValueError(f"the dispatcher URL {url!r} is given twice")
        seen.add(channel)
