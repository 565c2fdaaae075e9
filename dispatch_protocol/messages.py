"""The wire messages of the runner channel (docs/protocol.md) as one msgspec tagged union.

Theory of operation: every frame is a JSON object whose ``event`` field names its type. Each type
is a small frozen Struct; the base class sets the tag field once. Decoders and the encoder are built
once at import. Unknown fields are ignored, and every field added later must have a default so old
and new peers keep talking. A frame that fails to decode maps to close code 1007 (the channel code
decides that; this module only raises ``msgspec.ValidationError``/``DecodeError``).

This module imports nothing but msgspec and the standard library, so the runner agent can use it
without the server's dependencies (the ``dispatch-runner`` distribution ships it with the runner).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

PROTOCOL_VERSION = 1
PROTOCOL_MINOR = 1  # 1.1 added the runner's `log` event

# The most UTF-8 one `log` chunk's `data` may hold (PROTOCOL.md rule 10); more closes with 1007.
MAX_LOG_DATA_BYTES = 64 * 1024

# How deep a frame's JSON may nest: objects and arrays, the frame's own object counted as 1.
# Deeper is refused (1007). The decoder recurses, so this stays well below Python's recursion
# limit (1,000), whatever stack the caller already uses.
MAX_DEPTH = 500

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
JobId = Annotated[str, msgspec.Meta(pattern=UUID_PATTERN)]
Attempt = Annotated[int, msgspec.Meta(ge=1)]
PollTimeout = Annotated[int, msgspec.Meta(ge=1, le=900)]
DEFAULT_POLL_TIMEOUT = 30

Seq = Annotated[int, msgspec.Meta(ge=0)]
LogStream = Literal["stdout", "stderr"]
AckOf = Literal["running", "heartbeat", "completed", "failed", "canceled"]
CancelReason = Literal["canceled", "timeout", "lease_lost"]


class Message(msgspec.Struct, frozen=True, tag_field="event", omit_defaults=True):
    """Base of every channel message."""


class RunnerInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a runner tells about itself in ``ready``."""

    version: str
    os: str
    arch: str
    hostname: str | None = None


# -- runner -> server -------------------------------------------------------------------------


class Ready(Message, frozen=True, tag="ready"):
    poll_timeout: PollTimeout = DEFAULT_POLL_TIMEOUT
    runner: RunnerInfo | None = None


class Running(Message, frozen=True, tag="running"):
    job: JobId
    attempt: Attempt


class Heartbeat(Message, frozen=True, tag="heartbeat"):
    job: JobId
    attempt: Attempt


class Completed(Message, frozen=True, tag="completed"):
    job: JobId
    attempt: Attempt
    exit_code: int
    results: Any = None
    stdout: str | None = None
    stderr: str | None = None


class Failed(Message, frozen=True, tag="failed"):
    job: JobId
    attempt: Attempt
    error: str
    exit_code: int | None = None
    results: Any = None
    stdout: str | None = None
    stderr: str | None = None


class Canceled(Message, frozen=True, tag="canceled"):
    job: JobId
    attempt: Attempt


class Log(Message, frozen=True, tag="log"):
    """Live output of a job (protocol 1.1): never answered, fenced like `heartbeat`."""

    job: JobId
    attempt: Attempt
    seq: Seq
    stream: LogStream
    data: str


Terminal = Completed | Failed | Canceled
RunnerMessage = Ready | Running | Heartbeat | Completed | Failed | Canceled | Log


# -- server -> runner -------------------------------------------------------------------------


class Job(Message, frozen=True, tag="job"):
    job: str
    attempt: int
    spec: str
    payload: Any
    timeout: float
    heartbeat_interval: float
    created: str


class NoJob(Message, frozen=True, tag="no_job"):
    pass


class Ack(Message, frozen=True, tag="ack"):
    job: str
    of: AckOf


class Cancel(Message, frozen=True, tag="cancel"):
    job: str
    attempt: int
    reason: CancelReason


ServerMessage = Job | NoJob | Ack | Cancel

encoder = msgspec.json.Encoder()
runner_decoder: msgspec.json.Decoder[RunnerMessage] = msgspec.json.Decoder(RunnerMessage)
server_decoder: msgspec.json.Decoder[ServerMessage] = msgspec.json.Decoder(ServerMessage)


def encode(message: Message) -> str:
    """One message as the text of a WebSocket frame."""
    return encoder.encode(message).decode()


def decode_runner_message(text: str | bytes) -> RunnerMessage:
    """Parse a frame a runner sent; raises ``msgspec.DecodeError`` (a ValidationError too) for
    every frame it refuses, JSON nested deeper than the decoder goes included (see MAX_DEPTH)."""
    try:
        message = runner_decoder.decode(text)
    except RecursionError:
        raise msgspec.DecodeError("JSON nested too deeply") from None
    if isinstance(message, Completed | Failed) and _nests_deeper(text, message.results):
        raise msgspec.DecodeError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if isinstance(message, Log) and utf8_length_over(message.data, MAX_LOG_DATA_BYTES):
        raise msgspec.DecodeError(f"log data over {MAX_LOG_DATA_BYTES} bytes of UTF-8")
    return message


def utf8_length_over(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes as UTF-8 (encodes only when in doubt:
    a character takes 1 to 4 bytes)."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def _nests_deeper(text: str | bytes, results: Any) -> bool:
    """Whether ``results``, one level below the frame's object, takes the frame past MAX_DEPTH.

    Only ``results`` is free-form JSON; every other field has a fixed shape. A frame with fewer
    brackets than MAX_DEPTH cannot be that deep, so almost every frame is decided by two counts.
    """
    opened = (
        text.count("[") + text.count("{")
        if isinstance(text, str)
        else (text.count(b"[") + text.count(b"{"))
    )
    if opened <= MAX_DEPTH:
        return False
    stack = [(results, 2)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def decode_server_message(text: str | bytes) -> ServerMessage:
    """Parse a frame the server sent; raises ``msgspec.DecodeError`` (a ValidationError too)."""
    return server_decoder.decode(text)
