"""`dispatcher up` and `dispatcher serve` refusing to start: one line, the cause named, at once."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatcher.cli import main
from dispatcher.up import free_port, port_is_free
from tests.dispatcher.upkit import clean_env


def _unreachable_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # a port just found free: nothing listens there


@pytest.mark.parametrize("given_by", ["option", "environment"])
def test_up_with_an_unreachable_redis_names_it_and_the_logs_in_one_line(tmp_path, given_by):
    url = _unreachable_url()
    env = clean_env()
    argv = [sys.executable, "-m", "dispatcher", "up", "--port", str(free_port())]
    argv += ["--data-dir", str(tmp_path / "state")]
    if given_by == "option":
        argv += ["--redis-url", url]
    else:
        env["DISPATCHER_REDIS_URL"] = url
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert url in lines[0]
    assert "pod.log" in lines[0] and "worker-bridge.log" in lines[0] and "local-1.log" in lines[0]
    assert elapsed < 15, f"took {elapsed:.1f}s"  # Python start-up plus one refused connection
    assert not (tmp_path / "state" / "logs" / "pod.log").exists()  # nothing was started


def test_serve_with_redis_down_prints_one_line_and_exits_1():
    url = _unreachable_url()
    argv = [sys.executable, "-m", "dispatcher", "--redis-url", url]
    done = subprocess.run(
        [*argv, "serve", "--port", str(free_port())],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # not the application's start-up traceback
    assert lines[0].startswith(f"dispatcher: cannot reach Redis at {url} (")
    assert "refused" in lines[0].lower()


def test_up_help_shows_the_embedded_valkey_as_the_default(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["up", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "else an embedded Valkey" in text
    assert "6379" not in text
    assert "make demo ARGS='--port 8001'" in text


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dispatcher: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--runners", "-1"], "--runners must be >= 0"),
        (["--port", "0"], "--port 0 is not a port number"),
        (["--port", "70000"], "--port 70000 is not a port number"),
        (["--drain-timeout", "-1"], "--drain-timeout must be >= 0"),
        (["--redis-url", "notaurl"], "'notaurl' is not a Redis URL"),
    ],
)
def test_up_refuses_bad_input_in_one_line(tmp_path, capsys, monkeypatch, args, expected):
    for name in ("DISPATCHER_REDIS_URL", "DISPATCHER_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    argv = ["up", "--data-dir", str(tmp_path / "state")]
    if "--port" not in args:
        argv += ["--port", str(free_port())]
    assert expected in _one_line_error(capsys, argv + args)


def test_up_refuses_a_data_dir_that_is_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPATCHER_REDIS_URL", raising=False)
    a_file = tmp_path / "state"
    a_file.write_text("")
    line = _one_line_error(capsys, ["up", "--data-dir", str(a_file), "--port", str(free_port())])
    assert f"cannot use --data-dir {a_file}" in line


def test_up_refuses_a_port_in_use_and_says_how_to_choose_another(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPATCHER_REDIS_URL", raising=False)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        line = _one_line_error(capsys, ["up", "--data-dir", str(tmp_path), "--port", str(port)])
    assert f"port {port} is in use" in line
    assert "--port" in line


def _leave_a_time_wait_socket_on(port_holder: socket.socket) -> int:
    """Accept one connection and close it from the server side first: the server's end of it
    stays in TIME_WAIT on the listening port (60 s on Linux), after the listener is closed."""
    port: int = port_holder.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as client:
        conn, _ = port_holder.accept()
        conn.close()
        assert client.recv(1) == b""  # the server's FIN arrived
    port_holder.close()
    return port


def test_the_port_check_ignores_time_wait_like_the_server_but_not_a_listener():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = _leave_a_time_wait_socket_on(listener)
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # the old check: TIME_WAIT makes the port look taken
    assert port_is_free(port)
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", port))
        other.listen()
        assert not port_is_free(port)


def test_log_paths_in_messages_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    from dispatcher.supervisor import shown_path

    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "a" / "pod.log") == str(Path("a") / "pod.log")
    assert shown_path(Path("/elsewhere/pod.log")) == "/elsewhere/pod.log"
