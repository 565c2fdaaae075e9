"""Producer input checked in Python before anything reaches Redis (pure, no I/O).

The `submit` function in the Lua library checks the same rules and stays the authority (producers in
other languages call it directly); checking here too gives Python callers a ``ValueError`` or
``TypeError`` that names the argument, and a job id generated client-side.

The dispatcher itself never looks inside a payload (any JSON value travels to the runner as is).
``check_runner_payload`` adds the reference runner's conventions (exactly one of ``command`` or
``script``, and the optional ``env``, ``cwd``, ``outputs``) for callers that ask for them: the
``dispatcher submit`` command always (unless ``--any-payload``), the clients with
``check_payload=True``. A payload refused here would only fail at the runner.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from dispatcher import functions
from dispatcher.errors import InvalidInput, NotFound
from dispatcher.groups import check_group
from dispatcher.keys import Keys

DEFAULT_TIMEOUT = 3600
MAX_TIMEOUT = 30 * 24 * 3600
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_PRIORITY = 2**53 - 1
MAX_ATTEMPTS = 100
MAX_RETRIES = 100
MAX_RETRY_DELAY = 24 * 3600
SPEC_RE = re.compile(r"^[A-Za-z0-9._/@+-]{1,128}$")
# the rule `submit` in the Lua library applies to ids (36 characters, five groups of hex digits)
JOB_ID_RE = re.compile(r"^[0-9A-Fa-f]+(?:-[0-9A-Fa-f]+){4}$")


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A validated submission: exactly the arguments of the `submit` function."""

    job_id: str
    spec: str
    payload: str
    priority: int
    timeout: int | float
    max_attempts: int
    retries: int = 0
    retry_delay: int | float = 0
    group: str = ""

    def call(self, keys: Keys) -> functions.Call[str]:
        return functions.submit(
            keys,
            self.job_id,
            self.spec,
            self.payload,
            self.priority,
            self.timeout,
            self.max_attempts,
            self.retries,
            self.retry_delay,
            self.group,
        )


def job_request(
    spec: str,
    payload: Any = None,
    *,
    priority: int = 0,
    timeout: float | None = None,
    max_attempts: int = 1,
    check_payload: bool = False,
    job_id: str | None = None,
    retries: int = 0,
    retry_delay: float = 0,
    group: str | None = None,
) -> JobRequest:
    """Validate a submission (``payload=None`` means ``{}``); raise ValueError/TypeError.

    ``check_payload``: also refuse a payload the reference runner could not run
    (``check_runner_payload``). ``job_id``: the producer's own id (a UUID), else a new one.
    ``max_attempts`` counts infrastructure failures (lease lost, runner gone); ``retries`` is how
    often an attempt the runner reports ``failed`` (the command failed) is queued again, each
    after ``retry_delay`` seconds. ``group``: the concurrency group (``dispatcher.groups``).
    """
    payload = {} if payload is None else payload
    request = JobRequest(
        job_id=str(uuid.uuid4()) if job_id is None else check_new_job_id(job_id),
        spec=check_spec(spec),
        payload=encode_payload(payload),
        priority=_check_int("priority", priority, -MAX_PRIORITY, MAX_PRIORITY),
        timeout=check_timeout(DEFAULT_TIMEOUT if timeout is None else timeout),
        max_attempts=_check_int("max_attempts", max_attempts, 1, MAX_ATTEMPTS),
        retries=_check_int("retries", retries, 0, MAX_RETRIES),
        retry_delay=check_retry_delay(retry_delay),
        group="" if group is None else check_group(group),
    )
    if check_payload:
        check_runner_payload(payload)
    return request


# Submits per pipeline of ``submit_many``: one round trip each (about 200 KB of small jobs).
SUBMIT_BATCH = 200


def job_requests(jobs: Iterable[Mapping[str, Any]]) -> list[JobRequest]:
    """Validate every item of a ``submit_many`` (each: ``submit``'s arguments by name, ``spec``
    required) before anything is written; raise ValueError/TypeError naming the first bad item
    (``jobs[3]: ...``). Two items with the same ``job_id`` are refused too (the second would
    either repeat the first or be refused by Redis after the first went in)."""
    out: list[JobRequest] = []
    seen: dict[str, int] = {}
    for i, job in enumerate(jobs):
        if not isinstance(job, Mapping):
            raise TypeError(f"jobs[{i}]: a mapping of submit's arguments, not {type(job).__name__}")
        try:
            request = job_request(**job)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"jobs[{i}]: {exc}") from None
        if request.job_id in seen:
            earlier = seen[request.job_id]
            raise ValueError(f"jobs[{i}]: job_id {request.job_id} repeats jobs[{earlier}]")
        seen[request.job_id] = i
        out.append(request)
    return out


def batch_ids(first: int, replies: Sequence[str | Exception]) -> list[str]:
    """The ids a pipeline of submits replied, in order. The first error reply is raised, naming
    its item (``first``: the index of the batch's first item among all the items) and saying what
    went in: every other item up to the batch's last, none after it (the caller sends no more)."""
    for k, reply in enumerate(replies):
        if isinstance(reply, InvalidInput):
            last = first + len(replies) - 1
            raise InvalidInput(
                f"jobs[{first + k}]: {reply} (each job is its own submit: the other items up to "
                f"jobs[{last}] were submitted, none after it)"
            ) from reply
        if isinstance(reply, Exception):
            raise reply
    return [str(r) for r in replies]


def check_runner_payload(payload: Any) -> None:
    """Raise ``ValueError`` unless ``payload`` follows the reference runner's conventions.

    An object with exactly one of ``command`` (a non-empty list of strings, run as argv) and
    ``script`` (a string, run by ``/bin/sh -c``); optional ``env`` (an object of strings), ``cwd``
    and ``outputs`` (a relative path and a list of them, no ``..``). The same rules as
    ``runner.executor.parse_payload`` (a test keeps the two in step).
    """
    if not isinstance(payload, dict):
        raise ValueError("payload must be a JSON object with 'command' or 'script'")
    command, script = payload.get("command"), payload.get("script")
    if command is not None and script is not None:
        raise ValueError("payload has both 'command' and 'script'; give one")
    if command is not None:
        if not _is_str_list(command) or not command:
            raise ValueError("payload 'command' must be a non-empty list of strings")
    elif not isinstance(script, str):
        raise ValueError(
            "payload has neither 'command' (a list of strings) nor 'script' (a string)"
        )
    env = payload.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ValueError("payload 'env' must be an object of strings")
    cwd = payload.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ValueError("payload 'cwd' must be a string")
    outputs = payload.get("outputs") or []
    if not _is_str_list(outputs):
        raise ValueError("payload 'outputs' must be a list of strings")
    for path in [*([cwd] if cwd else []), *outputs]:
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts:
            raise ValueError(f"payload path {path!r} must be relative, without '..'")


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_spec(spec: Any) -> str:
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string, not {type(spec).__name__}")
    if not SPEC_RE.match(spec):
        raise ValueError(
            f"invalid spec {spec!r}: 1-128 characters of letters, digits and . _ / @ + -"
        )
    return spec


def encode_payload(payload: Any) -> str:
    try:
        text = json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except TypeError as exc:
        raise TypeError(f"payload must be JSON-serialisable: {exc}") from None
    except ValueError as exc:  # NaN/Infinity, or a circular reference
        raise ValueError(f"payload must be JSON-serialisable: {exc}") from None
    if len(text.encode()) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload is larger than {MAX_PAYLOAD_BYTES} bytes as JSON")
    return text


def check_timeout(timeout: Any) -> int | float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be > 0 and <= {MAX_TIMEOUT} seconds, not {timeout!r}")
    # whole seconds travel as integers so the record reads back 3600, not 3600.0
    return int(timeout) if float(timeout).is_integer() else float(timeout)


def check_runner_specs(name: Any, specs: Any) -> list[str]:
    """A runner registration's name and specs must be strings (the Lua library checks the rest:
    its name and spec rules, a name already taken); the specs as a list."""
    if not isinstance(name, str):
        raise TypeError(f"runner name must be a string, not {type(name).__name__}")
    if isinstance(specs, str) or not all(isinstance(spec, str) for spec in specs):
        raise TypeError("runner specs must be a list of strings")
    return list(specs)


def check_retry_delay(delay: Any) -> int | float:
    """Seconds before a retry: a number from 0 to ``MAX_RETRY_DELAY``."""
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise TypeError(f"retry_delay must be a number of seconds, not {type(delay).__name__}")
    if not math.isfinite(delay) or not 0 <= delay <= MAX_RETRY_DELAY:
        raise ValueError(f"retry_delay must be from 0 to {MAX_RETRY_DELAY} seconds, not {delay!r}")
    # like timeout: whole seconds travel as integers, as the record stores them
    return int(delay) if float(delay).is_integer() else float(delay)


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}, not {value}")
    return value


def is_job_id(text: str) -> bool:
    """Whether ``text`` has the shape of a whole job id (not a prefix)."""
    return len(text) == 36 and JOB_ID_RE.match(text) is not None


def check_new_job_id(job_id: Any) -> str:
    """A producer-chosen id for a new job: a UUID in its 36-character form (ValueError else)."""
    if not isinstance(job_id, str):
        raise TypeError(f"job id must be a string, not {type(job_id).__name__}")
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise ValueError(f"invalid job id {job_id!r}: must be a UUID") from None
    if len(job_id) != 36 or not JOB_ID_RE.match(job_id):
        raise ValueError(f"invalid job id {job_id!r}: must be a UUID in its 36-character form")
    return job_id.lower()


def check_job_id(job_id: Any) -> str:
    """A job id as given; anything that is not a UUID cannot name a job, so it is not found."""
    if not isinstance(job_id, str):
        raise TypeError(f"job id must be a string, not {type(job_id).__name__}")
    if len(job_id) != 36 or not JOB_ID_RE.match(job_id):
        raise NotFound(f"no such job: {job_id}")
    return job_id
