"""The daemon as a real subprocess: Client and CLI, systemd notify, SIGHUP reload,
many clients, hostile bytes, and a foreign uid."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import FAST, pid_alive
from daemon_helpers import DaemonProcess, write_config
from lilbee_workers import Client, WorkerTimeout
from lilbee_workers.cli.main import app
from lilbee_workers.transport import codec
from lilbee_workers.transport.channel import SocketChannel
from lilbee_workers.transport.frames import ErrorFrame, StatusReply, StatusRequest

TIMING = {k: v for k, v in FAST.items() if k != "debug_requests"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, model_path: str) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("daemon")
    config = write_config(
        root / "workers.toml",
        {
            "embed": {"model": model_path, "n_ctx": 512, **TIMING},
            "chat": {"model": model_path, "n_ctx": 512, **TIMING},
        },
        log_dir=str(root / "logs"),
        socket_mode=0o666,  # let the foreign-uid test reach the SO_PEERCRED check
    )
    process = DaemonProcess(config)
    process.wait_ready()
    yield process
    assert process.stop() == 0


def test_status_embed_and_streaming_chat_through_client(daemon: DaemonProcess) -> None:
    with Client(daemon.socket) as client:
        statuses = {s.role: s for s in client.status()}
        assert statuses["embed"].state == "ready" and statuses["chat"].state == "ready"
        assert statuses["embed"].pid and pid_alive(statuses["embed"].pid)
        vectors = client.embed(["bees", "honey"])
        assert vectors.shape == (2, 640)
        stream = client.chat("Bees are", max_tokens=8, temperature=0.0)
        chunks = list(stream)
        assert stream.result is not None and stream.result.completion_tokens == 8
        assert "".join(chunks) == stream.result.text


def test_cli_status_embed_chat_and_exit_codes(daemon: DaemonProcess) -> None:
    runner = CliRunner()
    env = {"LILBEE_WORKERS_SOCKET": str(daemon.socket)}
    result = runner.invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert {r["role"]: r["state"] for r in document["roles"]} == {
        "embed": "ready",
        "chat": "ready",
    }
    result = runner.invoke(app, ["status"], env=env)
    assert result.exit_code == 0 and "embed" in result.output and "ready" in result.output
    result = runner.invoke(app, ["embed", "bees", "honey", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert np.asarray(json.loads(result.output)["vectors"]).shape == (2, 640)
    result = runner.invoke(
        app, ["chat", "Bees are", "--max-tokens", "6", "--temperature", "0"], env=env
    )
    assert result.exit_code == 0 and result.output.strip(), result.output
    result = runner.invoke(app, ["status", "--socket", str(daemon.dir / "nope.sock")])
    assert result.exit_code == 69
    assert "nope.sock" in result.output


def test_real_console_script_streams_chat(daemon: DaemonProcess) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lilbee_workers.cli.main",
            "chat",
            "Bees are",
            "--max-tokens",
            "5",
            "--temperature",
            "0",
            "--socket",
            str(daemon.socket),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_32_concurrent_clients_20_embeds_each_none_lost(daemon: DaemonProcess) -> None:
    texts = [f"bee {i}" for i in range(8)]
    with Client(daemon.socket) as reference_client:
        reference = {t: reference_client.embed([t])[0] for t in texts}
    results: list[bool] = []
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            with Client(daemon.socket) as client:
                for call in range(20):
                    text = texts[(index + call) % len(texts)]
                    vector = client.embed([text])[0]
                    # Concurrent calls are coalesced into shared batches: equal to the
                    # lone answer up to batch-shape float noise (~2e-3 seen on gemma).
                    results.append(bool(np.allclose(vector, reference[text], atol=5e-3)))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not failures, failures[:3]
    assert len(results) == 32 * 20 and all(results)


def _raw_connection(daemon: DaemonProcess) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(daemon.socket))
    return sock


def _reply_then_close(sock: socket.socket) -> ErrorFrame:
    channel = SocketChannel(sock, codec.FROM_DAEMON)
    frame = channel.recv()
    assert isinstance(frame, ErrorFrame)
    with pytest.raises((EOFError, ConnectionResetError)):
        channel.recv()
    sock.close()
    return frame


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (struct.pack("!I", 12) + b"\xc1garbage!!!!", "undecodable"),
        (struct.pack("!I", 1 << 30) + b"x" * 100, "over the"),
        (
            struct.pack("!I", len(raw := msgspec.msgpack.encode({"k": "shell", "id": 9}))) + raw,
            "Invalid value 'shell'",
        ),
    ],
    ids=["garbage", "1GiB-prefix", "unknown-kind"],
)
def test_hostile_bytes_close_that_client_only(
    daemon: DaemonProcess, payload: bytes, match: str
) -> None:
    with Client(daemon.socket) as bystander:
        stream = bystander.chat("Bees are", max_tokens=12, temperature=0.0)
        assert next(stream)
        sock = _raw_connection(daemon)
        sock.sendall(payload)
        error = _reply_then_close(sock)
        assert error.kind == "protocol" and match in error.message
        assert stream.collect().completion_tokens == 12  # the bystander never noticed
        assert bystander.embed(["still here"]).shape == (1, 640)


def test_disconnect_mid_stream_cancels_and_the_daemon_carries_on(daemon: DaemonProcess) -> None:
    client = Client(daemon.socket)
    stream = client.chat("Write a long story about bees.", max_tokens=400, temperature=0.7)
    assert next(stream)
    stream.close()  # closes the connection: the daemon cancels the call
    client.close()
    started = time.monotonic()
    with Client(daemon.socket) as other:
        assert other.chat("Hi", max_tokens=2).collect().completion_tokens == 2
    assert time.monotonic() - started < 10


def test_the_callers_timeout_travels_to_the_daemon(daemon: DaemonProcess) -> None:
    # The daemon itself holds the deadline and answers the typed WorkerTimeout (the
    # client's own fallback says "the daemon did not answer"); the connection survives.
    with Client(daemon.socket) as client:
        stream = client.chat("Write a long story about bees.", max_tokens=400, timeout=1.0)
        with pytest.raises(WorkerTimeout, match="chat call did not finish within its timeout"):
            stream.collect()
        assert client.chat("Hi", max_tokens=2).collect().completion_tokens == 2
    sock = _raw_connection(daemon)
    channel = SocketChannel(sock, codec.FROM_DAEMON)
    embed = {"k": "embed", "id": 0, "texts": ["x"]}
    for bad in (math.inf, -1.0, 0.0):
        raw = msgspec.msgpack.encode({"k": "call", "id": 5, "request": embed, "timeout_s": bad})
        sock.sendall(struct.pack("!I", len(raw)) + raw)
        error = channel.recv()
        assert isinstance(error, ErrorFrame) and error.kind == "invalid_request", error
        assert "timeout must be finite and above zero" in error.message and error.id == 5
    sock.close()


def test_client_that_times_out_while_queued_is_never_served(daemon: DaemonProcess) -> None:
    # The daemon watches a waiting client's socket: one that gives up is dropped from
    # the queue at once, so it takes no queue room and costs the worker nothing.
    with Client(daemon.socket) as busy_client, Client(daemon.socket) as impatient:

        def embed_status() -> Any:
            return {s.role: s for s in impatient.status()}["embed"]

        served_before = embed_status().served
        long_texts = [f"bees {i} " * 30 for i in range(6)]  # a few seconds of work
        worker = threading.Thread(target=busy_client.embed, args=(long_texts,))
        worker.start()
        deadline = time.monotonic() + 10
        while embed_status().in_flight != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        began = time.monotonic()
        # The daemon holds the deadline and answers it itself (the client's own fallback,
        # a second later, says "the daemon did not answer").
        with pytest.raises(WorkerTimeout, match="embed call did not finish within its timeout"):
            impatient.embed(["patience"], timeout=0.3)
        assert time.monotonic() - began < 0.3 + 0.8
        deadline = time.monotonic() + 3
        while embed_status().queued and time.monotonic() < deadline:
            time.sleep(0.05)
        assert embed_status().queued == 0  # dropped before its turn came
        assert embed_status().in_flight == 1  # while the long call still runs
        worker.join(120)
        deadline = time.monotonic() + 5
        while embed_status().in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert embed_status().served == served_before + 1  # only the long call ran


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
def test_client_of_another_uid_is_refused(daemon: DaemonProcess) -> None:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child only touches a socket and a pipe, then _exits
        try:
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(str(daemon.socket))
            channel = SocketChannel(sock, codec.FROM_DAEMON)
            try:
                channel.send(StatusRequest(id=1))
            except OSError:
                pass
            frame = channel.recv()
            answer = f"{getattr(frame, 'kind', '?')} {getattr(frame, 'message', frame)}"
        except BaseException as exc:
            answer = f"child failed: {exc!r}"
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(child, 0)
    answer = os.read(read_end, 4096).decode()
    os.close(read_end)
    assert status == 0
    assert answer == "forbidden uid 65534 may not use this daemon", answer
    assert "refused a client" in daemon.output()
    with Client(daemon.socket) as client:  # and we are still welcome
        assert client.status()


def test_status_request_frame_roundtrip(daemon: DaemonProcess) -> None:
    sock = _raw_connection(daemon)
    channel = SocketChannel(sock, codec.FROM_DAEMON)
    channel.send(StatusRequest(id=41))
    reply = channel.recv()
    assert isinstance(reply, StatusReply) and reply.id == 41
    sock.close()
    assert codec.decode(codec.encode(reply)) == reply


# ----------------------------------------------------------------- notify, signals


def _notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)
    return sock


def _collect(sock: socket.socket, until: str, limit: float = 60) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        messages += data.split("\n")
        if any(m.startswith(until) for m in messages):
            return messages
    raise AssertionError(f"never got {until}; got {messages}")


def test_systemd_notify_ready_status_watchdog_stopping(tmp_path: Path, model_path: str) -> None:
    notify = _notify_socket(tmp_path / "notify.sock")
    config = write_config(
        tmp_path / "w.toml",
        {"embed": {"model": model_path, "n_ctx": 256, **TIMING}},
        log_dir=str(tmp_path / "logs"),
    )
    daemon = DaemonProcess(
        config,
        env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"},
    )
    try:
        first = _collect(notify, "WATCHDOG=1")
        ready = first.index("READY=1")
        assert any(m.startswith("STATUS=") and "embed=ready" in m for m in first[ready:])
        assert first.index("WATCHDOG=1") > ready
        daemon.signal(signal.SIGTERM)
        rest = _collect(notify, "STOPPING=1")
        assert "STOPPING=1" in rest
        assert daemon.proc.wait(60) == 0
        assert not daemon.socket.exists()
    finally:
        daemon.stop()
        notify.close()


def test_sighup_restarts_only_changed_roles_and_rejects_bad_config(
    tmp_path: Path, model_path: str
) -> None:
    roles = {
        "embed": {"model": model_path, "n_ctx": 256, **TIMING},
        "chat": {"model": model_path, "n_ctx": 256, **TIMING},
    }
    config = write_config(tmp_path / "w.toml", roles, log_dir=str(tmp_path / "logs"))
    daemon = DaemonProcess(config)
    try:
        client = daemon.wait_ready()
        before = {s.role: s.pid for s in client.status()}
        roles["chat"]["n_ctx"] = 512
        write_config(config, roles, log_dir=str(tmp_path / "logs"))
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = {s.role: (s.pid, s.state) for s in client.status()}
            if after["chat"][0] not in (None, before["chat"]) and after["chat"][1] == "ready":
                break
            time.sleep(0.1)
        assert after["chat"][0] != before["chat"]
        assert after["embed"][0] == before["embed"]
        # An invalid config is rejected; nothing restarts.
        config.write_text("[roles.chat]\nmodel = 5\n")
        daemon.signal(signal.SIGHUP)
        time.sleep(2)
        final = {s.role: s.pid for s in client.status()}
        assert final == {"embed": before["embed"], "chat": after["chat"][0]}
        assert "reload rejected" in daemon.output()
        assert client.chat("Hi", max_tokens=2).collect().completion_tokens == 2
    finally:
        assert daemon.stop() == 0
