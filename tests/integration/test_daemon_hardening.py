"""The daemon under abuse: out of file descriptors, too many or too slow connections,
oversized requests, reloads that take long, planted sockets, and the group setup."""

from __future__ import annotations

import grp
import os
import select
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST
from daemon_helpers import DaemonProcess, write_config
from lilbee_workers import (
    AccessDenied,
    Client,
    ConfigError,
    InvalidRequest,
    Overloaded,
    Supervisor,
    SupervisorConfig,
    WorkerError,
    testing,
)
from lilbee_workers.service.daemon import Daemon, DaemonSetupError
from lilbee_workers.service.server import SocketServer
from lilbee_workers.service.socket_setup import bind_socket
from lilbee_workers.transport import codec
from lilbee_workers.transport.channel import SocketChannel, encode_prefixed
from lilbee_workers.transport.frames import (
    DebugRequest,
    EmbedRequest,
    ErrorFrame,
    StatusReply,
    StatusRequest,
)

TIMING = {k: v for k, v in FAST.items() if k != "debug_requests"}
CAP = 4
FRAME_TIMEOUT_S = 2.0
MAX_ITEMS = 3
MAX_FRAME = 65536

as_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _connect(path: Path, timeout: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def _served(path: Path) -> socket.socket:
    """A connection the daemon has admitted (it answered a status request on it)."""
    sock = _connect(path)
    channel = SocketChannel(sock, codec.FROM_DAEMON)
    channel.send(StatusRequest(id=7))
    assert isinstance(channel.recv(), StatusReply)
    return sock


def _error_then_eof(sock: socket.socket) -> ErrorFrame:
    channel = SocketChannel(sock, codec.FROM_DAEMON)
    frame = channel.recv()
    assert isinstance(frame, ErrorFrame), frame
    with pytest.raises((EOFError, ConnectionResetError)):
        channel.recv()
    return frame


def _answers(path: Path, timeout: float = 60) -> bool:
    """The daemon answers a fresh client's status and embed within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with Client(path, connect_timeout=2) as client:
                client.status()  # status has its own 30 s limit
                return client.embed(["still here"], timeout=30).shape[0] == 1
        except WorkerError:
            time.sleep(0.5)
    return False


# ----------------------------------------------------------------- limits daemon


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, model_path: str) -> Iterator[DaemonProcess]:
    """A daemon with small limits: CAP connections, FRAME_TIMEOUT_S, MAX_ITEMS, MAX_FRAME."""
    root = tmp_path_factory.mktemp("limited")
    config = write_config(
        root / "workers.toml",
        {"embed": {"model": model_path, "n_ctx": 256, "max_batch_items": MAX_ITEMS, **TIMING}},
        log_dir=str(root / "logs"),
        max_connections=CAP,
        frame_timeout_s=FRAME_TIMEOUT_S,
        max_frame_bytes=MAX_FRAME,
    )
    process = DaemonProcess(config)
    process.wait_ready().close()
    yield process
    assert process.stop() == 0


def test_connections_past_the_cap_get_overloaded_and_the_daemon_recovers(
    limited: DaemonProcess,
) -> None:
    held = [_served(limited.socket) for _ in range(CAP)]  # idle, admitted connections
    try:
        for _ in range(3):
            extra = _connect(limited.socket)
            error = _error_then_eof(extra)
            extra.close()
            assert error.kind == "overloaded" and "max_connections" in error.message
        with pytest.raises(Overloaded, match="max_connections"):  # the Client's view
            Client(limited.socket).status()
        # The held connections are still served.
        channel = SocketChannel(held[0], codec.FROM_DAEMON)
        channel.send(StatusRequest(id=8))
        assert isinstance(channel.recv(), StatusReply)
    finally:
        for sock in held:
            sock.close()
    assert _answers(limited.socket), limited.output()
    assert "connection limit reached" in limited.output()


def test_a_trickled_frame_is_cut_after_frame_timeout_but_idle_connections_stay(
    limited: DaemonProcess,
) -> None:
    idle = _connect(limited.socket)  # opens and says nothing for longer than the timeout
    trickler = _connect(limited.socket)
    trickler.sendall(struct.pack("!I", 400))  # a 400-byte frame, sent one byte at a time
    started = time.monotonic()
    deadline = started + 30
    while time.monotonic() < deadline:
        readable, _, _ = select.select([trickler], [], [], 0.3)
        if readable:
            break
        try:
            trickler.send(b"\x00")
        except OSError:
            break
    cut_after = time.monotonic() - started
    assert cut_after < 30, "the daemon kept reading a trickled frame"
    error = _error_then_eof(trickler)
    trickler.close()
    assert error.kind == "protocol" and "frame_timeout_s" in error.message
    assert cut_after >= FRAME_TIMEOUT_S * 0.9
    channel = SocketChannel(idle, codec.FROM_DAEMON)  # the idle connection was left alone
    channel.send(StatusRequest(id=3))
    assert isinstance(channel.recv(), StatusReply)
    idle.close()
    assert _answers(limited.socket)


def test_a_length_prefix_over_max_frame_bytes_is_answered(limited: DaemonProcess) -> None:
    sock = _connect(limited.socket)
    sock.sendall(struct.pack("!I", MAX_FRAME + 1) + b"x" * 64)
    error = _error_then_eof(sock)
    sock.close()
    assert error.kind == "protocol" and f"{MAX_FRAME}-byte cap" in error.message
    assert _answers(limited.socket)


def test_a_request_over_max_batch_items_is_refused_before_any_worker(
    limited: DaemonProcess,
) -> None:
    with Client(limited.socket) as client:
        before = {s.role: s for s in client.status()}["embed"]
        with pytest.raises(InvalidRequest, match=r"4 texts .*\(roles\.embed\.max_batch_items\)"):
            client.embed(["a", "b", "c", "d"])
        after = {s.role: s for s in client.status()}["embed"]
        assert (after.served, after.errors) == (before.served, before.errors)  # no call ran
        assert after.pid == before.pid
        assert client.embed(["a", "b", "c"]).shape[0] == MAX_ITEMS  # the connection lives on


def test_in_process_supervisor_enforces_the_same_item_limit(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    sup = Supervisor(make_config({"embed": {"max_batch_items": 2}}))
    try:
        with pytest.raises(InvalidRequest, match="max_batch_items"):
            sup.embed(["a", "b", "c"])
        with pytest.raises(InvalidRequest, match="max_batch_items"):
            sup._open("embed", EmbedRequest(id=0, texts=["a"] * 3), None)
        assert not sup._dispatchers  # refused before any worker was started
    finally:
        sup.close()


# ----------------------------------------------------------------- out of descriptors


def test_daemon_out_of_file_descriptors_keeps_accepting(tmp_path: Path, model_path: str) -> None:
    config = write_config(
        tmp_path / "w.toml",
        {"embed": {"model": model_path, "n_ctx": 256, **TIMING}},
        log_dir=str(tmp_path / "logs"),
    )
    daemon = DaemonProcess(config, open_files=200)
    held: list[socket.socket] = []
    try:
        daemon.wait_ready().close()
        stalled_since = time.monotonic()
        while len(held) < 300 and time.monotonic() - stalled_since < 10:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(daemon.socket))
            except BlockingIOError:  # the listen backlog is full: let the daemon accept
                sock.close()
                time.sleep(0.05)
                continue
            held.append(sock)  # more connections than the daemon has descriptors
            stalled_since = time.monotonic()
        assert len(held) > 200
        fds = Path(f"/proc/{daemon.proc.pid}/fd")
        _wait(lambda: len(os.listdir(fds)) >= 200, 60, "the daemon to use all 200 descriptors")
        for sock in held:
            sock.close()
        held.clear()
        assert _answers(daemon.socket, timeout=90), daemon.output()
        assert daemon.proc.poll() is None
        log = daemon.log.read_text()
        assert "accept failed" in log and "EMFILE" in log  # it was out of fds, and said so
    finally:
        for sock in held:
            sock.close()
        assert daemon.stop() == 0


# ----------------------------------------------------------------- background threads


def _bare_daemon(model_path: str, tmp_path: Path, **top: Any) -> Daemon:
    from lilbee_workers import RoleConfig

    config = SupervisorConfig(
        roles={"embed": RoleConfig(model=model_path)}, log_dir=str(tmp_path / "logs"), **top
    ).validate()
    return Daemon(config, socket_path=tmp_path / "run" / "d.sock")


def _bind(daemon: Daemon) -> socket.socket:
    """The daemon's socket set up as ``run`` sets it up (a listening socket)."""
    return bind_socket(daemon.socket_path, daemon.config, daemon.socket_gid)


def _bare_server(model_path: str, tmp_path: Path) -> tuple[Daemon, SocketServer]:
    """A daemon with a socket server that never accepts (its listener is unbound)."""
    daemon = _bare_daemon(model_path, tmp_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server = SocketServer(
        listener, daemon.config, daemon.supervisor, threading.Event(), daemon._count_error
    )
    daemon.server = server
    return daemon, server


def test_watchdog_is_not_fed_once_the_accept_loop_is_gone(tmp_path: Path, model_path: str) -> None:
    daemon, server = _bare_server(model_path, tmp_path)
    finished = threading.Thread(target=lambda: None)
    finished.start()
    finished.join()
    server._accept_thread = finished
    assert not daemon._healthy()
    alive = threading.Event()
    running = threading.Thread(target=alive.wait)
    running.start()
    server._accept_thread = running
    try:
        assert daemon._healthy()
    finally:
        alive.set()
        running.join()
        server.drain(0.0)


def test_an_unexpected_error_in_a_connection_closes_that_connection_only(
    tmp_path: Path, model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, server = _bare_server(model_path, tmp_path)

    def broken(channel: SocketChannel[Any], frame: object) -> bool:
        raise RuntimeError("a bug in a handler")

    monkeypatch.setattr(server, "_handle", broken)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.settimeout(10)
    with server._lock:
        server._connections.add(ours)
    SocketChannel(theirs, codec.FROM_DAEMON).send(StatusRequest(id=1))
    server._serve_client(ours)  # must not raise
    error = _error_then_eof(theirs)
    theirs.close()
    assert error.kind == "internal" and "a bug in a handler" in error.message
    assert daemon.thread_errors["connection"] == 1
    assert not server._connections
    server.drain(0.0)


# ----------------------------------------------------------------- reload off the main loop


def _notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    return sock


class _Notifications:
    """Every message the daemon sends to the fake NOTIFY_SOCKET, read in the background."""

    def __init__(self, sock: socket.socket) -> None:
        self.messages: list[str] = []
        self._sock = sock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096).decode()
            except (TimeoutError, OSError):
                continue
            self.messages += data.split("\n")

    def index_after(self, message: str, start: int) -> int | None:
        for index in range(start, len(self.messages)):
            if self.messages[index] == message:
                return index
        return None

    def wait_for(self, message: str, start: int, timeout: float) -> int:
        found: list[int] = []

        def seen() -> bool:
            index = self.index_after(message, start)
            if index is not None:
                found.append(index)
            return index is not None

        _wait(seen, timeout, message)
        return found[0]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def test_reload_runs_off_the_main_loop_watchdog_fed_sigterm_handled(
    tmp_path: Path, model_path: str
) -> None:
    roles: dict[str, dict[str, Any]] = {
        "embed": {"model": model_path, "n_ctx": 256, **TIMING},
        "chat": {"model": model_path, "n_ctx": 256, **FAST},  # FAST allows debug requests
    }
    top = {"log_dir": str(tmp_path / "logs"), "drain_timeout_s": 3.0}
    config = write_config(tmp_path / "w.toml", roles, **top)
    notify = _Notifications(_notify_socket(tmp_path / "notify.sock"))
    daemon = DaemonProcess(
        config, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    )
    busy_client = Client(daemon.socket)
    results: list[object] = []

    def hold_chat(seconds: float) -> threading.Thread:
        """A call the reload must drain before it can restart chat."""

        def run() -> None:
            try:
                results.append(
                    testing.debug(
                        busy_client,
                        "chat",
                        DebugRequest(id=0, action="sleep", seconds=seconds),
                        300,
                    )
                )
            except WorkerError as exc:
                results.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        _wait(lambda: chat().in_flight == 1, 30, "the chat call to start")
        return thread

    try:
        client = daemon.wait_ready()

        def chat() -> Any:
            return {s.role: s for s in client.status()}["chat"]

        def embed_pid() -> int | None:
            return {s.role: s for s in client.status()}["embed"].pid

        start = notify.wait_for("READY=1", 0, 60)
        pids = {"chat": chat().pid, "embed": embed_pid()}

        # 1. A reload held up by a 15 s call: the watchdog keeps being fed meanwhile.
        holder = hold_chat(15)
        roles["chat"]["n_ctx"] = 512
        write_config(config, roles, **top)
        daemon.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", start, 30)
        _wait(
            lambda: notify.messages[reloading:].count("WATCHDOG=1") >= 3,
            10,
            "WATCHDOG=1 during the reload",
        )
        assert notify.index_after("READY=1", reloading) is None  # the reload still waits
        assert chat().in_flight == 1 and chat().pid == pids["chat"]

        # 2. A second SIGHUP during the reload is coalesced into one more reload after it.
        roles["embed"]["n_ctx"] = 512
        write_config(config, roles, **top)
        daemon.signal(signal.SIGHUP)
        holder.join(120)
        _wait(lambda: embed_pid() not in (None, pids["embed"]), 120, "the second reload")
        _wait(lambda: chat().state == "ready" and chat().pid != pids["chat"], 60, "chat back")
        assert "one more reload follows" in daemon.log.read_text()

        # 3. SIGTERM during a held-up reload stops the daemon promptly.
        mark = len(notify.messages)
        holder = hold_chat(300)
        roles["chat"]["n_ctx"] = 256
        write_config(config, roles, **top)
        daemon.signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1", mark, 30)
        stop_sent = time.monotonic()
        daemon.signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", mark, 10)
        assert daemon.proc.wait(60) == 0
        assert time.monotonic() - stop_sent < 30  # drain_timeout_s (3 s) plus slack
        holder.join(30)
        assert isinstance(results[-1], WorkerError)  # the held call ended with an error
    finally:
        busy_client.close()
        daemon.stop()
        notify.close()


# ----------------------------------------------------------------- socket ownership


def _foreign_dir(parent: Path) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="lbw-foreign-", dir=parent))
    os.chown(directory, 65534, 65534)
    return directory


def _run_as_nobody(body: Callable[[], str]) -> str:
    """Run ``body`` in a forked child with uid/gid 65534; return what it returned."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child touches sockets and files only, then _exits
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            answer = body()
        except BaseException as exc:
            answer = f"child failed: {exc!r}"
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(child, 0)
    return b"".join(chunks).decode()


@as_root
@pytest.mark.parametrize("planted", ["other-owner", "world-writable"])
def test_daemon_refuses_a_socket_dir_another_user_could_control(
    tmp_path: Path, model_path: str, planted: str
) -> None:
    base = Path(tempfile.mkdtemp(prefix="lbw-"))
    try:
        directory = base / "sockets"
        directory.mkdir()
        if planted == "other-owner":
            os.chown(directory, 65534, 65534)
            directory.chmod(0o700)
        else:
            directory.chmod(0o777)
        daemon = _bare_daemon(model_path, tmp_path)
        daemon.socket_path = directory / "d.sock"
        with pytest.raises(DaemonSetupError) as caught:
            _bind(daemon).close()
        message = str(caught.value)
        assert str(directory) in message
        if planted == "other-owner":
            assert "owned by uid 65534" in message and "--socket" in message
        else:
            assert "writable by group or others" in message and "chmod go-w" in message
        assert not (directory / "d.sock").exists()
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_daemon_creates_a_missing_socket_dir_private(tmp_path: Path, model_path: str) -> None:
    daemon = _bare_daemon(model_path, tmp_path)
    listener = _bind(daemon)
    try:
        assert (daemon.socket_path.parent.stat().st_mode & 0o777) == 0o700
        assert (daemon.socket_path.stat().st_mode & 0o777) == 0o600
    finally:
        listener.close()


@as_root
def test_cli_serve_refuses_a_planted_socket_dir_cleanly(tmp_path: Path) -> None:
    import subprocess
    import sys

    directory = _foreign_dir(Path(tempfile.gettempdir()))
    try:
        directory.chmod(0o777)  # as a planted /tmp/lilbee-workers-$UID would be
        config = write_config(
            tmp_path / "w.toml", {"embed": {"model": "/nonexistent.gguf"}}, log_dir=str(tmp_path)
        )
        result = subprocess.run(
            [sys.executable, "-m", "lilbee_workers.cli.main", "serve", "--config", str(config),
             "--socket", str(directory / "d.sock")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert str(directory) in result.stderr and "owned by uid 65534" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (directory / "d.sock").exists()
    finally:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


def _canned_status_reply() -> bytes:
    return encode_prefixed(StatusReply(id=0, roles=[]))


@pytest.fixture
def foreign_daemon(request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    """A fake daemon listening as uid 65534, in a directory in /tmp (anyone may create
    one there) or in a root-owned directory (as systemd's RuntimeDirectory): yields the
    socket path and a file that counts the requests it received."""
    if os.getuid() != 0:
        pytest.skip("needs root to act as another uid")
    parent = Path(tempfile.gettempdir())
    provisioned = getattr(request, "param", "tmp") == "provisioned"
    root_dir = None
    if provisioned:
        root_dir = Path(tempfile.mkdtemp(prefix="lbw-run-"))
        root_dir.chmod(0o755)
        parent = root_dir
    directory = _foreign_dir(parent)
    directory.chmod(0o700)
    path = directory / "d.sock"
    counter = directory / "requests"
    reply = _canned_status_reply()
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(8)
            listener.settimeout(60)
            os.write(ready_write, b"1")
            served = 0
            while True:
                conn, _ = listener.accept()
                conn.settimeout(2)
                try:
                    if conn.recv(65536):
                        served += 1
                        counter.write_text(str(served))
                        conn.sendall(reply)
                except OSError:
                    pass
        finally:
            os._exit(0)
    os.close(ready_write)
    assert os.read(ready_read, 1) == b"1"
    os.close(ready_read)
    try:
        yield path, counter
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
        if root_dir is not None:
            shutil.rmtree(root_dir, ignore_errors=True)


def test_client_refuses_a_daemon_run_by_another_user_in_tmp(
    foreign_daemon: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, counter = foreign_daemon
    monkeypatch.delenv("LILBEE_WORKERS_DAEMON_USER", raising=False)
    with pytest.raises(AccessDenied, match=r"nobody \(uid 65534\).*LILBEE_WORKERS_DAEMON_USER"):
        Client(path).status()
    assert not counter.exists()  # not one byte of a request reached it
    with Client(path, daemon_user="nobody") as trusting:  # trusted explicitly
        assert trusting.status() == []
    monkeypatch.setenv("LILBEE_WORKERS_DAEMON_USER", "65534")
    with Client(path) as trusting:
        assert trusting.status() == []


@pytest.mark.parametrize("foreign_daemon", ["provisioned"], indirect=True)
def test_client_trusts_the_owner_of_a_root_provisioned_socket_dir(
    foreign_daemon: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = foreign_daemon
    monkeypatch.delenv("LILBEE_WORKERS_DAEMON_USER", raising=False)
    with Client(path) as client:  # like /run/lilbee-workers, made by systemd
        assert client.status() == []


# ----------------------------------------------------------------- the group setup


def test_unknown_socket_group_is_a_config_error_naming_the_key(
    tmp_path: Path, model_path: str
) -> None:
    with pytest.raises(ConfigError, match="socket_group: no group named 'no-such-group-x'"):
        _bare_daemon(model_path, tmp_path, socket_group="no-such-group-x")
    import subprocess
    import sys

    config = write_config(
        tmp_path / "w.toml",
        {"embed": {"model": "/nonexistent.gguf"}},
        log_dir=str(tmp_path),
        socket_group="no-such-group-x",
    )
    result = subprocess.run(
        [sys.executable, "-m", "lilbee_workers.cli.main", "serve", "--config", str(config),
         "--socket", str(tmp_path / "s" / "d.sock")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "socket_group" in result.stderr and "groupadd" in result.stderr
    assert "Traceback" not in result.stderr


def test_socket_is_given_to_a_group_we_are_in(tmp_path: Path, model_path: str) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    daemon = _bare_daemon(model_path, tmp_path, socket_group=group, socket_mode=0o660)
    listener = _bind(daemon)
    try:
        info = daemon.socket_path.stat()
        assert info.st_gid == os.getgid() and (info.st_mode & 0o777) == 0o660
    finally:
        listener.close()


@as_root
def test_socket_group_we_are_not_in_gives_a_clear_error(tmp_path: Path, model_path: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="lbw-"))
    base.chmod(0o755)
    directory = _foreign_dir(base)
    directory.chmod(0o700)
    daemon = _bare_daemon(model_path, tmp_path, socket_group="root", socket_mode=0o660)
    daemon.socket_path = directory / "d.sock"

    def bind() -> str:
        try:
            _bind(daemon).close()
        except DaemonSetupError as exc:
            return f"DaemonSetupError: {exc}"
        return "bound"

    try:
        answer = _run_as_nobody(bind)
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    assert answer.startswith("DaemonSetupError: cannot give the socket"), answer
    assert "'root' (socket_group)" in answer and "must be a member" in answer
    assert "usermod -aG root nobody" in answer
