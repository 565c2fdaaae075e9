"""The runner's durable state under ``--state-dir``: the held result and the running job.

Why: a terminal result must survive the agent dying between finishing a job and the dispatcher's
ack (PROTOCOL.md rule 1 and 4: it is resent first after the next connect). So the result is written
*before* it is sent and removed only after its ack. Writes are atomic: a temporary file is written,
fsynced and renamed over the old one, then the directory is fsynced, so a crash leaves either the
old file or the new one, never a torn one.

The current-job record tells a restarted agent which job died with it, and (written before the
job's command starts) its process group: the agent kills what is left of the group before it
connects, logs the loss and sends ``ready``; the dispatcher ends that attempt (PROTOCOL.md rule 1).

The directory is private (0700) and its files 0600: results hold the jobs' output. The runner token
is never written here.

One agent per spool: ``open()`` takes an exclusive ``flock`` on a lock file, so two agents started
with the same state directory and runner name cannot both resend or drop the same result.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

import msgspec

from dispatch_protocol.messages import Job, Terminal
from runner.procgroup import ProcessGroup

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
CURRENT_FILE = "current.json"
LOCK_FILE = "lock"

_terminal_decoder: msgspec.json.Decoder[Terminal] = msgspec.json.Decoder(Terminal)


class SpoolLocked(RuntimeError):
    """Another agent holds this spool."""


class CurrentJob(msgspec.Struct, frozen=True):
    """What is recorded about the job being executed."""

    job: str
    attempt: int
    spec: str = ""
    group: ProcessGroup | None = None  # recorded before the job's command starts


class Spool:
    """Files in one directory; use as a context manager (or ``open()``/``close()``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock_fd: int | None = None

    def open(self) -> Spool:
        """Create the directory (private to this user) and lock it; raises ``SpoolLocked``."""
        # a --state-dir made here is private too; one that exists is left as the operator made it
        self.directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.mkdir(exist_ok=True, mode=0o700)
        _make_private(self.directory)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(f"{self.directory} is in use by another dispatch-runner") from None
        self._lock_fd = fd
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> Spool:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the held result --------------------------------------------------------------------------

    def save_result(self, message: Terminal) -> None:
        """Durably replace the held result with ``message``."""
        self._write_atomic(RESULT_FILE, msgspec.json.encode(message))

    def load_result(self) -> Terminal | None:
        """The held result, or ``None``; an unreadable file is set aside and reported."""
        data = self._read(RESULT_FILE)
        if data is None:
            return None
        try:
            return _terminal_decoder.decode(data)
        except msgspec.DecodeError as exc:
            self._set_aside(RESULT_FILE, exc)
            return None

    def remove_result(self) -> None:
        """Forget the held result (its ack arrived)."""
        self._remove(RESULT_FILE)

    # -- the job being executed -------------------------------------------------------------------

    def record_current(self, job: Job, group: ProcessGroup | None = None) -> None:
        record = CurrentJob(job=job.job, attempt=job.attempt, spec=job.spec, group=group)
        self._write_atomic(CURRENT_FILE, msgspec.json.encode(record))

    def load_current(self) -> CurrentJob | None:
        data = self._read(CURRENT_FILE)
        if data is None:
            return None
        try:
            return msgspec.json.decode(data, type=CurrentJob)
        except msgspec.DecodeError as exc:
            self._set_aside(CURRENT_FILE, exc)
            return None

    def clear_current(self) -> None:
        self._remove(CURRENT_FILE)

    # -- files ------------------------------------------------------------------------------------

    def _write_atomic(self, name: str, data: bytes) -> None:
        path = self.directory / name
        tmp = path.with_name(f".{name}.tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # a stale temporary file keeps its old mode otherwise
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._sync_directory()  # makes the rename itself durable

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / name).unlink()
            self._sync_directory()

    def _set_aside(self, name: str, error: Exception) -> None:
        # Keep the bytes for a human to look at; never resend or trust them.
        aside = self.directory / f"{name}.corrupt"
        os.replace(self.directory / name, aside)
        log.error("unreadable %s (%s); moved to %s", name, error, aside)

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_private(directory: Path) -> None:
    """Mode 0700 on a directory this user owns (one made by an operator for us, too)."""
    st = directory.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        directory.chmod(0o700)
