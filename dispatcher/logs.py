"""A job's live log (protocol 1.1 `log`): the two Redis Function calls and the chunk type, no I/O.

Theory of operation: the pod appends each `log` chunk with one fenced call (``append``); the
stream ``Keys.log(job)`` holds the chunks of every attempt in arrival order, each with its
attempt, seq and stream, and a ``note`` entry at the end when chunks were dropped past
DISPATCHER_LOG_MAX_BYTES. Readers page through it with ``read``, which returns the job's status
read at the same moment: once that status is final no chunk can follow, so a reader knows when it
has everything (``Page.complete``). ``dispatcher.logs_follow`` runs these calls for the clients.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from dispatcher.functions import Call
from dispatcher.keys import LIBRARY_NAME, Keys
from dispatcher.records import FINAL_STATUSES

# a `completed` job only waits for its result writer: its log cannot grow any more
LOG_FINAL_STATUSES = FINAL_STATUSES | {"completed"}
PAGE_SIZE = 256  # chunks per read: at most 16 MiB of data (64 KiB each)
START = "0"  # the id before every entry
_SURROGATE = re.compile("[\ud800-\udfff]")

ChunkStream = Literal["stdout", "stderr", "note"]
AppendResult = Literal["stored", "repeat", "dropped", "stale", "unknown"]


@dataclass(frozen=True, slots=True)
class LogChunk:
    """One stored chunk; ``stream`` is ``note`` for the dispatcher's own dropped-output note.
    ``id`` is the stream entry id (the Redis server's arrival time in ms, then a counter)."""

    id: str
    attempt: int
    seq: int
    stream: ChunkStream
    data: str

    def as_json(self) -> dict[str, Any]:
        """The chunk as `dispatcher logs --json` prints it, one object per line."""
        return {
            "id": self.id,
            "attempt": self.attempt,
            "seq": self.seq,
            "stream": self.stream,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class Page:
    """One ``read``: the job's status ('' = no such job) and the chunks after the cursor."""

    status: str
    chunks: tuple[LogChunk, ...]
    asked: int

    @property
    def final(self) -> bool:
        return self.status in LOG_FINAL_STATUSES

    @property
    def complete(self) -> bool:
        """Nothing can follow these chunks: the job was final when they were read, and the page
        was not full."""
        return self.final and len(self.chunks) < self.asked

    def after(self, cursor: str) -> str:
        """The cursor for the next read."""
        return self.chunks[-1].id if self.chunks else cursor


def _fn(name: str) -> str:
    return f"{LIBRARY_NAME}_{name}"


def storable(data: str) -> str:
    """``data`` as Redis can take it: a lone surrogate (valid in a JSON string escape, not in
    UTF-8) becomes U+FFFD instead of failing the call."""
    try:
        data.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", data)
    return data


def append(
    keys: Keys,
    runner: str,
    job_id: str,
    attempt: int,
    seq: int,
    stream: str,
    data: str,
    max_bytes: int,
) -> Call[AppendResult]:
    """Store one chunk, fenced by runner, job and attempt (``dispatch_v3_log_append``)."""
    declared = (keys.runner(runner), keys.job(job_id), keys.log(job_id))
    args = (keys.namespace, runner, job_id, attempt, str(seq), stream, storable(data), max_bytes)
    return Call(_fn("log_append"), declared, args, _append_result)


def _append_result(reply: Any) -> AppendResult:
    value = reply.decode() if isinstance(reply, bytes) else str(reply)
    if value not in ("stored", "repeat", "dropped", "stale", "unknown"):
        raise ValueError(f"unexpected log_append reply: {value!r}")
    return value  # type: ignore[return-value]


def read(keys: Keys, job_id: str, after: str = START, count: int = PAGE_SIZE) -> Call[Page]:
    """The chunks after ``after`` (at most ``count``) and the job's status, at one moment."""
    declared = (keys.job(job_id), keys.log(job_id))
    return Call(
        _fn("log_read"),
        declared,
        (keys.namespace, job_id, after, count),
        lambda reply: parse_page(reply, count),
    )


def parse_page(reply: Any, asked: int) -> Page:
    value = json.loads(reply)
    entries = value.get("entries") or []  # an empty Lua table encodes as {}
    chunks = tuple(
        LogChunk(str(i), int(attempt), int(seq), stream, str(data))
        for i, attempt, seq, stream, data in entries
    )
    return Page(str(value.get("status") or ""), chunks, asked)
