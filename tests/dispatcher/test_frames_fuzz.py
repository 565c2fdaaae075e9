"""Hostile frames: the decoder's properties (hypothesis), then thousands of random and mutated
frames against a live pod, each checked against the close-code table of docs/protocol.md, with
the pod healthy and the namespace's Redis state unchanged afterwards.

``DISPATCHER_FUZZ_FRAMES`` (default 2000) and ``DISPATCHER_FUZZ_SEED`` (default fixed, so CI
runs are repeatable) size the live run; ``make soak`` runs a long one with a fresh seed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import uuid
from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch_protocol import messages
from tests.dispatcher.fuzzkit import Close, FrameMaker, Reply, expected
from tests.dispatcher.logkit import pod_logs
from tests.dispatcher.nsstate import snapshot
from tests.dispatcher.rawhttp import exchange
from tests.dispatcher.support import CONNECTION_FIELDS, SPEC, submit, take_job, until_pod
from tests.podkit import RawRunner, add_runner, connect

# derandomized: the same examples on every run (the live fuzz below has its own seed)
repeatable = settings(derandomize=True, database=None, deadline=None)

FRAMES = int(os.environ.get("DISPATCHER_FUZZ_FRAMES", "2000"))
SEED = int(os.environ.get("DISPATCHER_FUZZ_SEED", "20261202"))
WORKERS = 4

# -- the decoder ------------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text()
)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
job_ids = st.uuids().map(str)
attempts = st.integers(min_value=1, max_value=2**63 - 1)
texts = st.text() | st.none()

runner_messages = st.one_of(
    st.builds(
        messages.Ready,
        poll_timeout=st.integers(min_value=1, max_value=900),
        runner=st.none()
        | st.builds(messages.RunnerInfo, st.text(), st.text(), st.text(), st.text() | st.none()),
    ),
    st.builds(messages.Running, job=job_ids, attempt=attempts),
    st.builds(messages.Heartbeat, job=job_ids, attempt=attempts),
    st.builds(
        messages.Completed,
        job=job_ids,
        attempt=attempts,
        exit_code=st.integers(min_value=-(2**63), max_value=2**63 - 1),
        results=json_values,
        stdout=texts,
        stderr=texts,
    ),
    st.builds(
        messages.Failed,
        job=job_ids,
        attempt=attempts,
        error=st.text(),
        exit_code=st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.none(),
        results=json_values,
        stdout=texts,
        stderr=texts,
    ),
    st.builds(messages.Canceled, job=job_ids, attempt=attempts),
)


@repeatable
@given(runner_messages)
def test_every_valid_message_round_trips(message):
    assert messages.decode_runner_message(messages.encode(message)) == message


@repeatable
@given(st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
def test_any_bytes_decode_or_raise_a_decode_error(data):
    """Never any other exception: the channel maps DecodeError to 1007."""
    try:
        message = messages.decode_runner_message(data)
    except msgspec.DecodeError:
        return
    assert isinstance(message, messages.RunnerMessage)


@repeatable
@given(runner_messages, st.data())
def test_a_field_of_the_wrong_type_is_refused(message, data):
    body = json.loads(messages.encode(message))
    required = {
        "job": st.integers() | st.text().filter(lambda t: t.count("-") != 4) | st.none(),
        "attempt": st.integers(max_value=0) | st.text() | st.floats() | st.none(),
        "poll_timeout": st.integers(min_value=901) | st.integers(max_value=0) | st.text(),
        "exit_code": st.text() | st.lists(st.integers()) | st.floats(allow_nan=False),
        "error": st.integers() | st.none() | st.lists(st.text()),
    }
    field = data.draw(st.sampled_from(sorted(set(body) & set(required)) or ["event"]))
    body[field] = data.draw(required.get(field, st.integers()))
    with pytest.raises(msgspec.DecodeError):
        messages.decode_runner_message(json.dumps(body))


@settings(repeatable, max_examples=30)
@given(st.integers(min_value=500, max_value=200_000), st.sampled_from(["[", '{"a":']))
def test_nesting_past_the_decoder_is_a_decode_error(depth, opening):
    closing = "]" if opening == "[" else "}"
    nested = opening * depth + "0" + closing * depth
    body = '{"event":"completed","job":"%s","attempt":1,"exit_code":0,"results":%s}'
    with pytest.raises(msgspec.DecodeError, match="nested"):
        messages.decode_runner_message(body % (uuid.uuid4(), nested))


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_nesting_is_accepted_up_to_the_documented_depth_and_refused_past_it(opening):
    closing = "]" if opening == "[" else "}"
    body = '{"event":"failed","job":"%s","attempt":1,"error":"e","results":%s}'
    depth = messages.MAX_DEPTH - 1  # the frame's own object is one level
    nested = opening * depth + "0" + closing * depth
    message = messages.decode_runner_message(body % (uuid.uuid4(), nested))
    assert isinstance(message, messages.Failed)
    # one more level, or the same depth beside a wide sibling, is refused
    for results in (f"[{nested}]", f"[[1,2,3],{{}},[{nested}]]"):
        with pytest.raises(msgspec.DecodeError, match="nested deeper than 500 levels"):
            messages.decode_runner_message(body % (uuid.uuid4(), results))


def test_many_shallow_brackets_are_not_deep():
    results = "[" + ",".join(["[]", "{}"] * 5000) + "]"
    body = '{"event":"completed","job":"%s","attempt":1,"exit_code":0,"results":%s}'
    message = messages.decode_runner_message(body % (uuid.uuid4(), results))
    assert isinstance(message, messages.Completed)


# -- the live channel -------------------------------------------------------------------------


def comparable(state: dict[str, Any], keys: Any, fuzzers: list[str]) -> dict[str, Any]:
    """The namespace without what every connection legitimately rewrites: the fuzz runners'
    connection fields and the per-minute connect counters."""
    out = {}
    rate_prefix = keys.connect_rate("", 0).rsplit(":", 2)[0] + ":"
    for key, value in state.items():
        if key.startswith(rate_prefix):
            continue
        if key in {keys.runner(name) for name in fuzzers} and isinstance(value, dict):
            value = {f: v for f, v in value.items() if f not in CONNECTION_FIELDS | {"conn"}}
        out[key] = value
    return out


async def fuzz_one_runner(
    pod, name, token, maker: FrameMaker, count: int, tally: Counter[str]
) -> None:
    """Send ``count`` frames as runner ``name``; reconnect after every close."""
    runner: RawRunner | None = None
    for _ in range(count):
        frame = maker.frame()
        outcome = expected(frame, maker.max_bytes)
        if outcome is None:
            tally["skipped (valid ready)"] += 1
            continue
        if runner is None:
            runner = await connect(pod, name, token, max_size=None)
        if frame.binary:
            await runner.ws.send(frame.data if isinstance(frame.data, bytes) else b"")
        else:
            await runner.ws.send(frame.data, text=True)
        where = f"{frame.kind} frame {str(frame.data)[:160]!r}"
        if isinstance(outcome, Close):
            code, reason = await runner.closed(timeout=10)
            assert code == outcome.code, (where, code, reason)
            assert reason.strip(), where
            tally[f"close {code}"] += 1
            runner = None
        else:
            assert isinstance(outcome, Reply)
            reply = await runner.recv(timeout=10)
            assert reply == outcome.message, where
            tally[f"reply {reply['event']}"] += 1
    if runner is not None:
        await runner.close()


async def test_fuzzed_frames_get_the_documented_close_codes_and_change_nothing(
    launch, settings, rclient, keys, namespace
):
    fuzz_settings = dataclasses.replace(
        settings, max_message_bytes=64 * 1024, connect_rate=1_000_000
    )
    pod = await launch(fuzz_settings)
    fuzzers = [f"fuzz{i}" for i in range(WORKERS)]
    tokens = {name: add_runner(settings, name, ["fuzz-only"]) for name in fuzzers}
    good_token = add_runner(settings, "good", [SPEC])
    job_id = submit(rclient, keys)  # a real job the frames aim at, too
    before = comparable(snapshot(rclient, namespace), keys, fuzzers)
    tally: Counter[str] = Counter()
    with pod_logs() as logs:
        await asyncio.gather(
            *(
                fuzz_one_runner(
                    pod,
                    name,
                    tokens[name],
                    FrameMaker(SEED * 100 + i, [job_id], fuzz_settings.max_message_bytes),
                    FRAMES // WORKERS,
                    tally,
                )
                for i, name in enumerate(fuzzers)
            )
        )
        for name in fuzzers:
            await until_pod(rclient, keys, name, "")
    print(f"fuzz seed {SEED}: {sorted(tally.items())}")
    assert sum(tally.values()) == FRAMES // WORKERS * WORKERS
    assert logs.at_least(logging.ERROR) == []
    assert comparable(snapshot(rclient, namespace), keys, fuzzers) == before
    # the pod is healthy: it answers /healthz and a good runner gets the job
    health = await exchange(
        pod.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert health.status == 200
    good = await connect(pod, "good", good_token)
    assert (await take_job(good))["job"] == job_id
    await good.close()
