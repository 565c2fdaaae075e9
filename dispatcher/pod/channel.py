"""The runner channel endpoint, ``GET /v1/runners/{runner}/channel`` (PROTOCOL.md).

Authentication and the connect rate limit run before the upgrade, so a refused handshake is a
plain HTTP 401/429 and changes no job or runner state. After the upgrade, frames are read one at
a time and handled in order; every job-scoped message goes through a fenced Redis function.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import redis
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket

from dispatch_protocol import closecodes, messages
from dispatcher import functions, logs
from dispatcher.errors import NotFound, ProtocolError
from dispatcher.forwarded import UNKNOWN, client_address
from dispatcher.pod.bells import Offer
from dispatcher.pod.pod import Pod
from dispatcher.pod.session import Event, ReadyPlan
from dispatcher.pod.sockets import RunnerSocket
from dispatcher.ratelimit import FailureLimiter
from dispatcher.tokens import token_hash

log = logging.getLogger(__name__)


# -- before the upgrade ---------------------------------------------------------------------------


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


async def refusal(
    pod: Pod,
    runner: str,
    header: str | None,
    source: str = UNKNOWN,
    failures: FailureLimiter | None = None,
) -> PlainTextResponse | None:
    """Why this handshake is refused (a response to send instead of upgrading), or None.

    ``source`` is the address the attempt is accounted to and ``failures`` the pod's window of
    failed authentications per source: a source over it is refused before its token is looked at
    (no Redis work, and a right guess gets no answer either)."""
    if pod.stopping:
        return PlainTextResponse("dispatcher pod shutting down\n", status_code=503)
    if failures is not None:
        wait = failures.retry_after(source, time.monotonic())
        if wait is not None:
            return PlainTextResponse(
                "too many failed authentications\n",
                status_code=429,
                headers={"Retry-After": str(wait)},
            )
    token = bearer_token(header)
    stored = await pod.redis.hget(pod.keys.runner(runner), "token_hash")
    expected = stored.encode() if isinstance(stored, str) else stored
    if (
        token is None
        or expected is None
        or not hmac.compare_digest(expected, token_hash(token).encode())
    ):
        if failures is not None:
            failures.failed(source, time.monotonic())
        return PlainTextResponse(
            "invalid runner token\n", status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
    now = time.time()
    minute = int(now // 60)
    key = pod.keys.connect_rate(runner, minute)
    async with pod.redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, 120)
        attempts, _ = await pipe.execute()
    if int(attempts) > pod.settings.connect_rate:
        retry_after = str(max(1, int((minute + 1) * 60 - now + 0.999)))
        return PlainTextResponse(
            "too many connection attempts\n", status_code=429, headers={"Retry-After": retry_after}
        )
    return None


def handshake_source(ws: WebSocket) -> str:
    """The address this handshake is accounted to (``X-Forwarded-For`` only behind a trusted
    proxy, ``DISPATCHER_TRUSTED_PROXIES``)."""
    peer = ws.client.host if ws.client is not None else None
    trusted = ws.app.state.trusted_proxies
    return client_address(peer, ws.headers.getlist("x-forwarded-for"), trusted)


async def channel(ws: WebSocket) -> None:
    """One runner connection, from handshake to close."""
    pod: Pod = ws.app.state.pod
    runner = ws.path_params["runner"]
    try:
        refused = await refusal(
            pod,
            runner,
            ws.headers.get("authorization"),
            handshake_source(ws),
            ws.app.state.auth_failures,
        )
    except redis.RedisError as exc:
        log.warning("handshake of %s: Redis unavailable: %s", runner, exc)
        refused = PlainTextResponse("storage unavailable\n", status_code=503)
    if refused is not None:
        pod.metrics.refused(refused.status_code)
        await ws.send_denial_response(refused)
        return
    await ws.accept()
    try:
        sock = await pod.attach(runner, ws)
    except NotFound:  # revoked between the handshake and now
        await ws.close(closecodes.REVOKED, "runner token revoked")
        return
    except redis.RedisError as exc:
        log.warning("attach of %s failed: %s", runner, exc)
        await ws.close(closecodes.INTERNAL, "storage unavailable")
        return
    try:
        if pod.stopping:  # the drain began while this connection was being attached
            await sock.close(closecodes.GOING_AWAY, "dispatcher pod shutting down")
        await serve(pod, sock)
    finally:
        await pod.detach(sock)


# -- after the upgrade ----------------------------------------------------------------------------


async def serve(pod: Pod, sock: RunnerSocket) -> None:
    """Read frames until the runner or the pod closes the connection."""
    while not sock.closed:
        frame = await sock.ws.receive()
        if frame["type"] == "websocket.disconnect":
            sock.disconnected()
            return
        try:
            await handle_frame(pod, sock, frame)
        except ProtocolError as exc:
            await sock.close(exc.code, exc.reason)
        except redis.RedisError as exc:
            log.warning("runner %s: Redis error, closing: %s", sock.runner, exc)
            await sock.close(closecodes.INTERNAL, "storage unavailable; reconnect")
        except Exception:
            log.exception("runner %s: unexpected error, closing", sock.runner)
            await sock.close(closecodes.INTERNAL, "internal error; reconnect")


async def handle_frame(pod: Pod, sock: RunnerSocket, frame: Mapping[str, Any]) -> None:
    text = frame.get("text")
    if not isinstance(text, str):
        raise ProtocolError(closecodes.UNSUPPORTED, "binary frames are not accepted")
    if len(text) > pod.settings.max_message_bytes:
        raise ProtocolError(closecodes.TOO_BIG, "message over the size limit")
    try:
        message = messages.decode_runner_message(text)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ProtocolError(closecodes.INVALID, f"invalid message: {exc}") from None
    except Exception as exc:  # any other decoder failure is still the frame's fault
        log.info("runner %s: frame refused by the decoder: %r", sock.runner, exc)
        raise ProtocolError(closecodes.INVALID, "invalid message: undecodable") from None
    await HANDLERS[type(message)](pod, sock, message)


async def on_ready(pod: Pod, sock: RunnerSocket, message: messages.Message) -> None:
    assert isinstance(message, messages.Ready)
    plan = sock.session.ready()
    if plan is not ReadyPlan.ASK_REDIS:
        await _ready_from_linger(pod, sock, message.poll_timeout)
        return
    if sock.unlisting is not None:
        await sock.unlisting
    info = messages.encoder.encode(message.runner).decode() if message.runner else ""
    mode = "try" if pod.settings.wake == "poll" else "wait"
    call = functions.ready(pod.keys, sock.runner, sock.conn, info, mode)
    reply = await functions.run(pod.calls, call)
    if reply["result"] == "job":
        await pod.deliver(sock, Offer.from_reply(reply))
    elif reply["result"] in ("idle", "none"):
        rang = sock.session.wait()
        pod.polls.arm(sock, message.poll_timeout)
        if rang:  # a doorbell came while the ready script ran: look again now
            pod.spawn(pod.observe(sock.runner))
    else:
        await pod.observe(sock.runner)  # no longer the runner's current connection


async def _ready_from_linger(pod: Pod, sock: RunnerSocket, poll_timeout: int) -> None:
    """The runner never left the idle sets: answer from what the pod already knows."""
    sock.cancel_poll_timer()
    offer = sock.session.take_held()
    if offer is not None:
        await pod.deliver(sock, offer)
        return
    sock.session.wait()
    pod.polls.arm(sock, poll_timeout)


async def on_running(pod: Pod, sock: RunnerSocket, message: messages.Message) -> None:
    assert isinstance(message, messages.Running)
    sock.session.check_running()  # 1008 while a poll is open
    await pod.polls.unlinger(sock)
    call = functions.start(pod.keys, sock.runner, message.job, message.attempt, pod.id, sock.conn)
    reply = await functions.run(pod.calls, call)
    if reply["result"] == "ok":
        sock.session.start_job(message.job, message.attempt, Event.RUNNING)
        pod.metrics.started(sock, message.job, message.attempt)
        await sock.send(messages.Ack(job=message.job, of="running"))
    else:
        pod.metrics.fenced_reply("running", reply["reason"])
        await sock.push_cancel(message.job, message.attempt, reply["reason"])


async def on_heartbeat(pod: Pod, sock: RunnerSocket, message: messages.Message) -> None:
    assert isinstance(message, messages.Heartbeat)
    call = functions.heartbeat(pod.keys, sock.runner, message.job, message.attempt)
    reply = await functions.run(pod.calls, call)
    if reply["result"] == "ok":
        await sock.send(messages.Ack(job=message.job, of="heartbeat"))
    else:
        pod.metrics.fenced_reply("heartbeat", reply["reason"])
        await sock.push_cancel(message.job, message.attempt, reply["reason"])


async def on_terminal(pod: Pod, sock: RunnerSocket, message: messages.Message) -> None:
    """Record (fenced; the same call puts the outcome in the results outbox), then acknowledge
    (rule 4): the result is durable once that one call returns."""
    assert isinstance(message, messages.Completed | messages.Failed | messages.Canceled)
    call = finish_call(pod, sock, message)
    if pod.durability.waits:  # DISPATCHER_ACK_DURABILITY: replicas or AOF before the ack
        timeout_ms = int(pod.settings.ack_wait_timeout * 1000)
        reply, waited = await functions.run_then(
            pod.redis, call, pod.durability.command(timeout_ms)
        )
        if not pod.durability.satisfied(waited):
            log.warning("result of %s not durable in time (%r): no ack", message.job, waited)
            if reply["result"] == "recorded":
                pod.wake_pump()
            await sock.close(closecodes.INTERNAL, "result not yet durable; resend it")
            return
    else:
        reply = await functions.run(pod.calls, call)
    if reply["result"] == "recorded":
        pod.wake_pump()
        if int(reply.get("retry_in") or 0) > 0:
            pod.sweep_at(int(reply["retry_in"]) / 1000)
    else:  # duplicate, stale or unknown: acknowledged all the same (rule 4)
        pod.metrics.fenced_reply(_TERMINAL_EVENT[type(message)], reply["result"])
    sock.session.job_done(message.job, message.attempt)
    await sock.send(messages.Ack(job=message.job, of=_TERMINAL_EVENT[type(message)]))
    if reply.get("retired"):  # an ephemeral runner's one attempt ended: its registration is gone
        await sock.close(closecodes.REVOKED, "ephemeral runner: its job is done")


async def on_log(pod: Pod, sock: RunnerSocket, message: messages.Message) -> None:
    """Store one chunk of live output (protocol 1.1, rules 9-10): fenced like `heartbeat`, never
    answered, the lease untouched; a repeat, a foreign job's chunk or one past the job's limit
    is dropped (Redis decides; over-long `data` was refused by the decoder with 1007). Past
    DISPATCHER_LOG_RATE the next frame of this connection is read later (``LogBudget``)."""
    assert isinstance(message, messages.Log)
    if sock.session.log():
        call = logs.append(
            pod.keys,
            sock.runner,
            message.job,
            message.attempt,
            message.seq,
            message.stream,
            message.data,
            pod.settings.log_max_bytes,
        )
        result = await functions.run(pod.calls, call)
        if result != "stored":
            pod.metrics.fenced_reply("log", result)
    else:
        pod.metrics.fenced_reply("log", "no_job")
    size = len(message.data)  # characters: near enough to bytes for a budget
    wait = sock.session.log_wait(size, time.monotonic(), pod.settings.log_rate)
    if wait > 0:  # this connection only: TCP slows the runner down, nothing is dropped
        await asyncio.sleep(wait)


_TERMINAL_EVENT: dict[type, messages.AckOf] = {
    messages.Completed: "completed",
    messages.Failed: "failed",
    messages.Canceled: "canceled",
}


def finish_call(
    pod: Pod, sock: RunnerSocket, message: messages.Completed | messages.Failed | messages.Canceled
) -> functions.Call[dict[str, Any]]:
    status = _TERMINAL_EVENT[type(message)]
    if isinstance(message, messages.Canceled):
        return functions.finish(
            pod.keys,
            sock.runner,
            message.job,
            message.attempt,
            status,
            exit_code=None,
            results=None,
            stdout=None,
            stderr=None,
            error="canceled by the runner",
        )
    results = None if message.results is None else messages.encoder.encode(message.results).decode()
    error = message.error if isinstance(message, messages.Failed) else ""
    return functions.finish(
        pod.keys,
        sock.runner,
        message.job,
        message.attempt,
        status,
        exit_code=message.exit_code,
        results=results,
        stdout=message.stdout,
        stderr=message.stderr,
        error=error,
    )


HANDLERS = {
    messages.Ready: on_ready,
    messages.Running: on_running,
    messages.Heartbeat: on_heartbeat,
    messages.Completed: on_terminal,
    messages.Failed: on_terminal,
    messages.Canceled: on_terminal,
    messages.Log: on_log,
}
