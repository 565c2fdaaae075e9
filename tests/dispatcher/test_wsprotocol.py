"""The pod's own WebSocket protocol (``dispatcher.wsprotocol``) against real pods and clients:
the close codes PROTOCOL.md promises, with and without compression, and the second line of head
limits; plus the pure parts (``dispatcher.wsasgi``)."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import pytest
import websockets
from websockets.datastructures import Headers
from websockets.http11 import Request

from dispatcher import wsasgi
from tests.dispatcher.rawhttp import exchange, upgrade_head
from tests.dispatcher.support import (
    SPEC,
    ready_and_waiting,
    runner_rec,
    start_job,
    state_of,
    submit,
    take_job,
    until_pod,
)
from tests.podkit import add_runner, connect

LIMIT = 64 * 1024


async def job_in_flight(pod, settings, rclient, keys, **connect_options):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token, **connect_options)
    await ready_and_waiting(runner, rclient, keys)
    job_id = submit(rclient, keys)
    job = await runner.expect("job")
    await start_job(runner, job)
    return runner, job_id


async def closed_with(runner, rclient, keys, job_id, before, code):
    got, reason = await runner.closed(timeout=10)
    assert got == code, (got, reason)
    assert reason.strip(), "a close always carries a reason"
    await until_pod(rclient, keys, runner.name, "")
    assert state_of(rclient, keys, job_id, runner.name) == before
    assert runner_rec(rclient, keys, runner.name)["state"] == "busy"
    return reason


PAYLOADS = {
    "compressible": "z" * (LIMIT + 8 * 1024),  # a few hundred bytes once deflated
    "incompressible": os.urandom(LIMIT // 2 + 8 * 1024).hex(),  # as large on the wire
}


@pytest.mark.parametrize("compression", [False, True], ids=["deflate-off", "deflate-on"])
@pytest.mark.parametrize("payload", list(PAYLOADS), ids=list(PAYLOADS))
async def test_a_message_over_the_limit_closes_1009_with_or_without_compression(
    launch, settings, rclient, keys, compression, payload
):
    """Whichever side notices first (the frame header without deflate, the inflater with it),
    the runner receives the 1009 close frame: the pod lingers before closing the socket."""
    small = dataclasses.replace(settings, max_message_bytes=LIMIT, ws_compression=compression)
    pod = await launch(small)
    runner, job_id = await job_in_flight(pod, small, rclient, keys)
    negotiated = runner.ws.response.headers.get("Sec-WebSocket-Extensions")
    assert bool(negotiated) is compression, negotiated
    before = state_of(rclient, keys, job_id, "r1")
    with contextlib.suppress(websockets.ConnectionClosed, ConnectionResetError):
        await runner.send(
            "completed",
            job=job_id,
            attempt=1,
            exit_code=0,
            results=None,
            stdout=PAYLOADS[payload],
        )
    await closed_with(runner, rclient, keys, job_id, before, 1009)


async def test_a_compressed_message_under_the_limit_is_accepted(launch, settings, rclient, keys):
    small = dataclasses.replace(settings, max_message_bytes=LIMIT, ws_compression=True)
    pod = await launch(small)
    runner, job_id = await job_in_flight(pod, small, rclient, keys)
    stdout = "y" * (LIMIT - 4096)
    await runner.send("completed", job=job_id, attempt=1, exit_code=0, results=None, stdout=stdout)
    assert (await runner.expect("ack"))["job"] == job_id
    assert rclient.hget(keys.job(job_id), "stdout") == stdout


async def test_invalid_utf8_closes_1007_with_the_reason(pod, settings, rclient, keys):
    runner, job_id = await job_in_flight(pod, settings, rclient, keys)
    before = state_of(rclient, keys, job_id, "r1")
    async with runner.ws.send_context():  # a text frame whose payload is not UTF-8
        runner.ws.protocol.send_text(b'{"event": "heartbeat\xc3\x28"}')
    reason = await closed_with(runner, rclient, keys, job_id, before, 1007)
    assert reason == wsasgi.INVALID_UTF8


async def test_a_fragmented_message_is_delivered_whole(pod, settings, rclient, keys):
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    await runner.ws.send(['{"event": "re', 'ady", "poll_', 'timeout": 5}'])  # three frames
    assert (await runner.expect("job"))["job"] == job_id
    await runner.close()


async def test_a_header_line_the_websocket_parser_refuses_is_answered_431(
    pod, settings, rclient, keys
):
    """The guard allows lines up to 8192 bytes; websockets' parser counts the line end too.
    That second line of limits answers with its own 431 and closes (no hang, no error log)."""
    line = "X-Long: " + "y" * (8192 - len("X-Long: "))
    answer = await exchange(pod.port, upgrade_head(extra=[("X-Long", line[8:])]), timeout=10)
    assert answer.status_line == "HTTP/1.1 431 Request Header Fields Too Large", answer.data[:200]
    # the pod is unharmed: a runner still connects and takes a job
    token = add_runner(settings, "r1", [SPEC])
    runner = await connect(pod, "r1", token)
    job_id = submit(rclient, keys)
    assert (await take_job(runner))["job"] == job_id
    await runner.close()


# -- the pure parts -------------------------------------------------------------------------------


def request(path: str, *headers: tuple[str, str]) -> Request:
    return Request(path, Headers(list(headers)))


def test_the_scope_lowercases_header_names_and_splits_the_query():
    req = request(
        "/v1/runners/r%201/channel?token=x",
        ("Host", "a"),
        ("Authorization", "Bearer t"),
        ("Sec-WebSocket-Protocol", "one, two"),
        ("X-Latin", "caf\xe9"),
    )
    scope = wsasgi.channel_scope(
        req, server=("127.0.0.1", 80), client=("127.0.0.1", 5), scheme="ws", root_path="", state={}
    )
    assert scope["path"] == "/v1/runners/r 1/channel"
    assert scope["raw_path"] == b"/v1/runners/r%201/channel"
    assert scope["query_string"] == b"token=x"
    assert (b"authorization", b"Bearer t") in scope["headers"]
    assert (b"x-latin", b"caf\xe9") in scope["headers"]
    assert scope["subprotocols"] == ["one", "two"]
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert wsasgi.logged_path(scope) == "/v1/runners/r 1/channel?<query removed>"


def test_a_denial_is_a_complete_closing_response():
    response = wsasgi.denial(401, [("WWW-Authenticate", "Bearer")], b"invalid runner token\n")
    assert (response.status_code, response.reason_phrase) == (401, "Unauthorized")
    assert response.headers["Connection"] == "close"
    assert response.headers["Content-Length"] == str(len(response.body))
    assert response.headers["WWW-Authenticate"] == "Bearer"
    with pytest.raises(RuntimeError):
        wsasgi.denial(99, [], b"")


@pytest.mark.parametrize(
    ("payload", "text"),
    [(b"{}", "{}"), ("\u2713".encode(), "\u2713"), (b"\xff", None), (b"\xc3\x28", None)],
)
def test_text_is_decoded_once_or_refused(payload, text):
    assert wsasgi.decode_text(payload) == text
