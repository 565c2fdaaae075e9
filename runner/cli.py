"""``dispatch-runner``: the command that runs the reference runner agent.

    dispatch-runner --url http(s)://HOST:PORT [--url ...] --runner NAME --token TOKEN
        [--poll-timeout S] [--state-dir DIR] [--drain-timeout S] [--kill-grace S]
        [--work-dir DIR] [--log-format text|json] [--job-user NAME] [--once]

``--url`` may be repeated (or hold a comma-separated list): the agent then fails over between the
pods with back-off (``runner.failover``). Every URL is checked at start; a bad one is one line on
stderr and exit status 2.

The token may come from ``DISPATCH_RUNNER_TOKEN`` instead of ``--token``; prefer that, since other
users of the host can read a command line. A ``--token`` value is overwritten in ``sys.argv`` and,
on Linux, in the process's own argument memory, so ``ps`` shows asterisks after start-up; the same
is done to the original environment memory (``/proc/PID/environ``), and the agent makes itself
non-dumpable (``runner.secrecy``). The token is removed from the environment the jobs get and
scrubbed from every log line. ``--job-user`` (or ``DISPATCH_RUNNER_JOB_USER``) runs the jobs as
another user; the agent must then be root.

Exit status: 0 after a normal shutdown, 1 after a forced one (second signal) or a fatal error such
as a state directory in use, 2 for bad arguments, 3 when the dispatcher kept refusing the token.
With ``--once`` (one job, for a VM or pod started per job): 0 once that job's result is
acknowledged, 4 when the job could not run (no exit code: bad payload, command not found, or
stopped by a cancel, its timeout or a drain).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from runner import __version__
from runner.config import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_STATE_DIR,
    TOKEN_ENV,
    AgentConfig,
    check_urls,
    split_urls,
)
from runner.driver import Agent
from runner.executor import DEFAULT_KILL_GRACE, WorkDirError
from runner.jobuser import JOB_USER_ENV, JobUserError, reach_problem, resolve_job_user
from runner.logs import setup_logging
from runner.procgroup import GroupSurvived
from runner.secrecy import make_undumpable, scrub_memory
from runner.spool import SpoolLocked

log = logging.getLogger("runner")


Parse = Callable[[str], float]


def _number(kind: Parse, low: float, high: float | None = None) -> Parse:
    """An argparse type: ``kind`` within [low, high]; argparse turns ValueError into exit 2."""

    def parse(text: str) -> float:
        value = kind(text)
        if value < low or (high is not None and value > high):
            bounds = f"{low:g}..{high:g}" if high is not None else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({bounds})")
        return value

    return parse


EPILOG = f"""\
examples:
  {TOKEN_ENV}=... dispatch-runner --url http://127.0.0.1:8000 --runner local-1
  {TOKEN_ENV}=... dispatch-runner --url https://dispatch.example.com --runner build-01 \\
      --state-dir /var/lib/dispatch-runner --log-format json
  {TOKEN_ENV}=... dispatch-runner --runner build-01 \\
      --url http://pod-a.internal:8000 --url http://pod-b.internal:8000   # fails over between them
  {TOKEN_ENV}=... dispatch-runner --url https://dispatch.example.com --runner vm-7f3a --once

environment:
  {TOKEN_ENV}  the runner's token (from `dispatcher runner add` or `rotate`); preferred
                         to --token, which other users of the host can see; jobs never get it
  {JOB_USER_ENV}  run the jobs as this user, like --job-user (the agent must be root)
  every other variable   passed on to the jobs' environment (a job's payload.env adds to it)

files:
  STATE_DIR/NAME/        spool of one runner name (0700): its lock, the result not yet
                         acknowledged and the job being run with its process group (kept across
                         restarts: a restarted agent kills that group first); jobs run in
                         STATE_DIR/NAME/work, or WORK_DIR/NAME with --work-dir

exit status: 0 after a normal shutdown (SIGTERM/SIGINT: the running job may finish within
--drain-timeout), 1 after a forced one (second signal) or a fatal error (state directory unusable
or in use, a job user that cannot reach the work directory, a previous job's processes that
survive SIGKILL), 2 for bad arguments (--job-user when not root, or an unknown user), 3 when the
dispatcher kept refusing the token. With --once: 0 once the one job's result is acknowledged
(whatever the job's exit code), 4 when that job could not run (no exit code: bad payload, command
not found, or stopped by a cancel, its timeout or a drain), 3 at the first token refusal after
that job (an ephemeral registration the server ended before the result could be delivered).

one-shot runners: --once with a runner added by `dispatcher runner add NAME --ephemeral` (whose
token stops working when its first job ends) for a VM or pod started per job.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dispatch-runner",
        description="Run a dispatcher's jobs: connect to the dispatcher as runner NAME, run each "
        "job it sends (payload.command or payload.script) and report the outcome.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url",
        action="append",
        required=True,
        metavar="URL",
        help="dispatcher base URL, http(s)://HOST:PORT; repeat it (or separate with commas) to "
        "fail over between several pods",
    )
    p.add_argument("--runner", required=True, help="this runner's name, as registered")
    p.add_argument(
        "--token",
        help=f"runner token (better: set {TOKEN_ENV}); one that begins with '-' as --token=TOKEN",
    )
    p.add_argument("--poll-timeout", type=_number(int, 1, 900), default=30, help="long poll, s")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="spool directory")
    p.add_argument(
        "--drain-timeout",
        type=_number(float, 0),
        default=DEFAULT_DRAIN_TIMEOUT,
        help="on shutdown, stop the running job after this many seconds",
    )
    p.add_argument(
        "--kill-grace",
        type=_number(float, 0),
        default=DEFAULT_KILL_GRACE,
        help="seconds between SIGTERM and SIGKILL when stopping a job",
    )
    p.add_argument("--work-dir", type=Path, help="base of the per-job work directories")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument(
        "--job-user",
        metavar="NAME",
        help=f"run jobs as this user (the agent must be root; or set {JOB_USER_ENV})",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="take one job, report it, wait for its ack, exit (0, or 4 if it could not run)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = make_config(parser, args, os.environ)
    hide_secret(config.token)
    setup_logging(args.log_format, secrets=[config.token])
    if args.token:
        log.warning("the token was given with --token; prefer %s", TOKEN_ENV)
    os.environ.pop(TOKEN_ENV, None)  # nothing started from here on inherits it
    problem = directory_problem(config)
    if problem is None and config.job_user is not None:
        problem = reach_problem(config.job_dir, config.job_user)
    if problem is not None:
        log.error("%s", problem)
        return 1
    try:
        return asyncio.run(_run(Agent(config)))
    except (SpoolLocked, WorkDirError, GroupSurvived) as exc:
        log.error("%s", exc)
        return 1


def make_config(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    euid: int | None = None,
) -> AgentConfig:
    """The agent's settings from parsed arguments; a usage error exits 2 via ``parser.error``,
    an unusable job user with one line on stderr and status 2."""
    token = args.token or environ.get(TOKEN_ENV)
    if not token:
        parser.error(f"no token: pass --token or set {TOKEN_ENV}")
    try:
        urls = split_urls(args.url)
        check_urls(urls, args.runner)
    except ValueError as exc:  # one line, no usage: the operator sees which URL is wrong
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    job_user = None
    if user_name := args.job_user or environ.get(JOB_USER_ENV):
        try:
            job_user = resolve_job_user(user_name, euid=os.geteuid() if euid is None else euid)
        except JobUserError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return AgentConfig(
        urls=urls,
        runner=args.runner,
        token=token,
        state_dir=args.state_dir,
        work_dir=args.work_dir,
        poll_timeout=args.poll_timeout,
        drain_timeout=args.drain_timeout,
        kill_grace=args.kill_grace,
        # jobs never see the token, under its own name or any other
        base_env={k: v for k, v in environ.items() if k != TOKEN_ENV and token not in v},
        job_user=job_user,
        once=args.once,
    )


def directory_problem(config: AgentConfig) -> str | None:
    """Why the spool or the work directory cannot be used (one line), or None: checked before
    connecting, so a mistake is one message at start rather than a traceback later."""
    dirs = [
        ("--state-dir", config.state_dir),  # first: made here, it is private too (0700)
        ("--state-dir", config.spool_dir),
        ("--work-dir", config.job_dir),
    ]
    for option, path in dirs:
        try:
            if path.exists() and not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            return f"cannot use {option}: {exc.filename or path}: {reason}"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"cannot use {option}: {path}: not writable"
    return None


async def _run(agent: Agent) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_shutdown)
    log.info(
        "dispatch-runner %s: runner %r at %s",
        __version__,
        agent.config.runner,
        ", ".join(agent.config.channel_urls),
    )
    return await agent.run()


def hide_secret(secret: str) -> None:
    """Keep ``secret`` from other processes: out of ``sys.argv`` and, on Linux, out of what
    ``/proc/PID/cmdline`` and ``/proc/PID/environ`` show; then make the agent non-dumpable."""
    sys.argv[:] = [arg.replace(secret, "***") for arg in sys.argv]
    scrub_memory(secret)  # first: a non-dumpable process may not open its own /proc/self/mem
    make_undumpable()
