"""Hostile frames for the channel, and what the close-code table of docs/protocol.md says each
one must get.

Frames come from a seeded ``random.Random``, so a failing run is replayed with the same seed.
Kinds: valid messages mutated (a field dropped, retyped, made huge or deep, the JSON text itself
damaged), random text, invalid UTF-8 in a text frame, binary frames, deep nesting, huge numbers,
frames over the size limit.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from dispatch_protocol import messages

JOB_EVENTS = ("running", "heartbeat", "completed", "failed", "canceled")


@dataclass(frozen=True)
class Frame:
    """One frame to send: text (a str, or bytes sent as a text frame unchecked) or binary."""

    data: str | bytes
    binary: bool = False
    kind: str = ""


@dataclass(frozen=True)
class Close:
    code: int


@dataclass(frozen=True)
class Reply:
    message: dict[str, Any]


Outcome = Close | Reply | None  # None: not sent (a valid `ready` would change state)


def expected(frame: Frame, max_bytes: int) -> Outcome:
    """The outcome docs/protocol.md promises for ``frame`` on an idle connection."""
    raw = frame.data.encode() if isinstance(frame.data, str) else frame.data
    if len(raw) > max_bytes:  # the WebSocket layer, before anything looks at the frame
        return Close(1009)
    if frame.binary:
        return Close(1003)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return Close(1007)
    try:
        message = messages.decode_runner_message(text)
    except msgspec.DecodeError:
        return Close(1007)
    if isinstance(message, messages.Ready):
        return None
    if isinstance(message, messages.Running | messages.Heartbeat):
        cancel = {"event": "cancel", "job": message.job, "attempt": message.attempt}
        return Reply({**cancel, "reason": "lease_lost"})
    of = {messages.Completed: "completed", messages.Failed: "failed", messages.Canceled: "canceled"}
    return Reply({"event": "ack", "job": message.job, "of": of[type(message)]})


class FrameMaker:
    """Random hostile frames; ``job_ids`` are ids worth aiming at (e.g. a real pending job)."""

    def __init__(self, seed: int, job_ids: list[str], max_bytes: int) -> None:
        self.rng = random.Random(seed)
        self.job_ids = job_ids
        self.max_bytes = max_bytes
        self.kinds: list[tuple[Callable[[], Frame], int]] = [
            (self.mutated_message, 40),
            (self.damaged_text, 15),
            (self.random_text, 8),
            (self.invalid_utf8, 5),
            (self.binary, 4),
            (self.deep, 8),
            (self.huge_number, 8),
            (self.valid_message, 10),
            (self.oversized, 2),
        ]

    def frame(self) -> Frame:
        makers = [maker for maker, _ in self.kinds]
        weights = [weight for _, weight in self.kinds]
        maker: Callable[[], Frame] = self.rng.choices(makers, weights)[0]
        return maker()

    # -- values -----------------------------------------------------------------------------

    def job_id(self) -> str:
        if self.job_ids and self.rng.random() < 0.3:
            return self.rng.choice(self.job_ids)
        return str(uuid.UUID(int=self.rng.getrandbits(128)))

    def text(self, limit: int = 40) -> str:
        alphabet = 'ab "\\{}[]:,\n\t\u00e9\u2603\U0001f600\x00\x1f'
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, limit)))

    def any_value(self, depth: int = 0) -> Any:
        pick = self.rng.randint(0, 9 if depth < 3 else 6)
        if pick == 0:
            return None
        if pick == 1:
            return self.rng.choice([True, False])
        if pick == 2:
            return self.rng.randint(-(2**70), 2**70)
        if pick == 3:
            return self.rng.choice([0.5, -1e308, 1e-320, 3.0, -0.0])
        if pick in (4, 5):
            return self.text()
        if pick == 6:
            return self.rng.choice([0, 1, -1, 2**31, 2**63, 2**64])
        if pick in (7, 8):
            return [self.any_value(depth + 1) for _ in range(self.rng.randint(0, 4))]
        return {self.text(8): self.any_value(depth + 1) for _ in range(self.rng.randint(0, 4))}

    def message(self) -> dict[str, Any]:
        event = self.rng.choice(JOB_EVENTS)
        body: dict[str, Any] = {"event": event, "job": self.job_id()}
        body["attempt"] = self.rng.randint(1, 5)
        if event == "completed":
            body.update(exit_code=self.rng.randint(-5, 255), results=self.any_value())
        if event == "failed":
            body.update(error=self.text(), exit_code=self.rng.randint(-5, 255))
        if event in ("completed", "failed") and self.rng.random() < 0.5:
            body.update(stdout=self.text(200), stderr=self.text(50))
        return body

    # -- frame kinds ------------------------------------------------------------------------

    def valid_message(self) -> Frame:
        return Frame(json.dumps(self.message()), kind="valid")

    def mutated_message(self) -> Frame:
        body = self.message()
        for _ in range(self.rng.randint(1, 3)):
            key = self.rng.choice([*body, "event", "job", "attempt", "extra"])
            action = self.rng.randint(0, 4)
            if action == 0:
                body.pop(key, None)
            elif action == 1:
                body[key] = self.any_value()
            elif action == 2:
                body[key] = self.rng.choice(["ready", "no_job", "job", "ack", "", "RUNNING", 1])
            elif action == 3:
                body[key] = self.rng.choice([0, -1, 2**64, 10**30, 1.5, "1", None, [], {}])
            else:
                body[key] = self.text()
        return Frame(json.dumps(body), kind="mutated")

    def damaged_text(self) -> Frame:
        text = list(json.dumps(self.message()))
        for _ in range(self.rng.randint(1, 4)):
            if not text:
                break
            where = self.rng.randrange(len(text))
            action = self.rng.randint(0, 2)
            if action == 0:
                del text[where]
            elif action == 1:
                text.insert(where, self.rng.choice('{}[]",:\\0 e-+.'))
            else:
                text[where] = self.rng.choice('{}[]",:\\0x ')
        return Frame("".join(text), kind="damaged")

    def random_text(self) -> Frame:
        return Frame(self.text(300), kind="random-text")

    def invalid_utf8(self) -> Frame:
        valid = json.dumps(self.message()).encode()
        where = self.rng.randrange(len(valid))
        bad = self.rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        return Frame(valid[:where] + bad + valid[where:], kind="invalid-utf8")

    def binary(self) -> Frame:
        data = self.rng.randbytes(self.rng.randint(0, 200))
        if self.rng.random() < 0.5:
            data = json.dumps(self.message()).encode()
        return Frame(data, binary=True, kind="binary")

    def deep(self) -> Frame:
        depth = self.rng.choice([400, 999, 1000, 1001, 5000, 100_000])
        opening, closing = self.rng.choice([("[", "]"), ('{"a":', "}")])
        nested = opening * depth + "1" + closing * depth
        if self.rng.random() < 0.5:
            return Frame(nested, kind="deep")
        body = self.message()
        body["results"] = "@"
        return Frame(json.dumps(body).replace('"@"', nested), kind="deep")

    def huge_number(self) -> Frame:
        body = self.message()
        key = self.rng.choice(["attempt", "exit_code", "results", "poll_timeout"])
        number = self.rng.choice(
            ["1" + "0" * 400, "-1" + "0" * 5000, "1e999", "-1e-999", "1.5e308", "9" * 20, "0.0e0"]
        )
        body[key] = "@"
        return Frame(json.dumps(body).replace('"@"', number), kind="huge-number")

    def oversized(self) -> Frame:
        body = self.message()
        body["stdout"] = "x" * (self.max_bytes + 1)
        return Frame(json.dumps(body), kind="oversized")
