"""The wire messages: exact frames out, strict parsing in (PROTOCOL.md)."""

import json
import subprocess
import sys

import msgspec
import pytest

from dispatch_protocol import messages as m

JOB = "6f1c1c8e-1111-4444-8888-123456789abc"


def test_server_frames_are_exactly_the_documented_objects():
    assert json.loads(m.encode(m.NoJob())) == {"event": "no_job"}
    assert json.loads(m.encode(m.Ack(job=JOB, of="heartbeat"))) == {
        "event": "ack",
        "job": JOB,
        "of": "heartbeat",
    }
    assert json.loads(m.encode(m.Cancel(job=JOB, attempt=2, reason="timeout"))) == {
        "event": "cancel",
        "job": JOB,
        "attempt": 2,
        "reason": "timeout",
    }
    job = m.Job(
        job=JOB,
        attempt=1,
        spec="linux",
        payload=msgspec.Raw(b'{"a":[1]}'),
        timeout=60.0,
        heartbeat_interval=0.5,
        created="2026-01-01T00:00:00.000Z",
    )
    assert json.loads(m.encode(job)) == {
        "event": "job",
        "job": JOB,
        "attempt": 1,
        "spec": "linux",
        "payload": {"a": [1]},
        "timeout": 60.0,
        "heartbeat_interval": 0.5,
        "created": "2026-01-01T00:00:00.000Z",
    }


def test_ready_defaults_and_unknown_fields_are_ignored():
    msg = m.decode_runner_message('{"event":"ready","extra":true}')
    assert msg == m.Ready(poll_timeout=30, runner=None)
    msg = m.decode_runner_message(
        '{"event":"ready","poll_timeout":900,"runner":{"version":"1","os":"linux","arch":"x"}}'
    )
    assert isinstance(msg, m.Ready) and msg.runner is not None and msg.runner.hostname is None


def test_terminal_messages_round_trip():
    for msg in (
        m.Completed(job=JOB, attempt=1, exit_code=0, results={"k": [1, None]}, stdout=""),
        m.Failed(job=JOB, attempt=2, error="boom", exit_code=3, stderr="e"),
        m.Canceled(job=JOB, attempt=1),
    ):
        assert m.decode_runner_message(m.encode(msg)) == msg


@pytest.mark.parametrize(
    "text",
    [
        "not json{{{",
        "[]",
        '{"poll_timeout": 5}',
        '{"event":"dance"}',
        '{"event":"ready","poll_timeout":0}',
        '{"event":"ready","poll_timeout":901}',
        '{"event":"ready","poll_timeout":"5"}',
        '{"event":"ready","runner":{"os":"linux"}}',
        f'{{"event":"running","job":"{JOB}","attempt":0}}',
        '{"event":"running","job":"not-a-uuid","attempt":1}',
        f'{{"event":"heartbeat","job":"{JOB}"}}',
        f'{{"event":"completed","job":"{JOB}","attempt":1}}',
        f'{{"event":"failed","job":"{JOB}","attempt":1,"exit_code":1}}',
    ],
)
def test_malformed_frames_are_decode_errors(text):
    with pytest.raises(msgspec.DecodeError):
        m.decode_runner_message(text)


def test_the_module_imports_only_msgspec_and_the_standard_library():
    code = (
        "import sys; import dispatch_protocol.messages; "
        "bad = [n for n in ('redis', 'rq', 'starlette', 'uvicorn') if n in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
