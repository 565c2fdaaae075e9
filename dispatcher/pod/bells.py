"""What a doorbell message says (format: ``notify_offer`` in ``lua/dispatch.lua`` and
docs/redis-schema.md "Channels"), and the offer a pod turns into a `job` frame. Pure: no I/O.

A bell names a runner whose Redis state changed. A match's bell also names the connection
generation the runner was idle on, the job and attempt assigned and, when the payload is small
enough to ride along, the whole offer, so the pod can send the `job` without asking Redis.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from dispatch_protocol import messages
from dispatcher.records import rfc3339

_RUNNER_NAME = re.compile(r"[A-Za-z0-9._@+\-]{1,128}")  # NAME_PATTERN of dispatch.lua


@dataclass(frozen=True, slots=True)
class Offer:
    """What a pod needs to send a `job` frame: a claimed job's current attempt (``payload`` is
    the submitted JSON text, kept raw)."""

    job: str
    attempt: int
    spec: str
    payload: bytes
    timeout: float
    created: int | None  # ms on the Redis clock

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> Offer:
        """The offer of a function's JSON reply (``ready``, ``poll_end``, ``observe``)."""
        created = reply.get("created")
        return cls(
            job=str(reply["job"]),
            attempt=int(reply["attempt"]),
            spec=str(reply["spec"]),
            payload=str(reply["payload"]).encode(),
            timeout=float(reply["timeout"]),
            created=None if created is None else int(created),
        )

    def message(self, heartbeat_interval: float) -> messages.Job:
        """The `job` frame for this offer (the payload goes out as the raw JSON it is)."""
        return messages.Job(
            job=self.job,
            attempt=self.attempt,
            spec=self.spec,
            payload=msgspec.Raw(self.payload),
            timeout=self.timeout,
            heartbeat_interval=heartbeat_interval,
            created=rfc3339(self.created) or "",
        )


@dataclass(frozen=True, slots=True)
class Bell:
    """One doorbell message: look at ``runner``. A match's bell also names the connection
    generation the runner was idle on and the job and attempt assigned, and carries the offer
    when its payload was small enough to ride along (else ``offer`` is None)."""

    runner: str
    conn: int = 0  # 0: not a match's bell
    job: str = ""
    attempt: int = 0
    offer: Offer | None = None


def parse_bell(data: bytes) -> Bell | None:
    """Parse a bell (format in ``dispatch.lua``, ``notify_offer``): a runner name alone, or
    ``'<runner> <conn> <job> <attempt> <spec> <timeout> <created>'`` and, after a newline, the
    payload. None when the message names no runner; a match's bell whose head does not parse is
    taken as a bell for its first word (the pod then reads the rest from Redis)."""
    head, newline, payload = data.partition(b"\n")
    try:
        fields = head.decode().split(" ")
    except UnicodeDecodeError:
        return None
    if not _RUNNER_NAME.fullmatch(fields[0]):
        return None
    if len(fields) == 1 and not newline:
        return Bell(fields[0])
    try:
        runner, conn, job, attempt, spec, timeout, created = fields
        offer = Offer(job, int(attempt), spec, payload, float(timeout), int(float(created)))
        generation = int(conn)
    except ValueError:
        return Bell(fields[0])
    return Bell(runner, generation, job, offer.attempt, offer if payload else None)
