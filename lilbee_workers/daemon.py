"""The daemon: a Supervisor behind a Unix socket, with signals and systemd notify.

Frames on the socket are the same msgspec Structs as on the pipes, each behind a 4-byte
length prefix. One thread per connection; a connection runs one request at a time
(clients open several connections for concurrency). A client that disconnects while
its stream runs cancels the call.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from types import FrameType

import msgspec
import structlog

from lilbee_workers.config import SupervisorConfig, load_config
from lilbee_workers.errors import (
    AccessDenied,
    ConfigError,
    InvalidRequest,
    ProtocolError,
    WorkerError,
)
from lilbee_workers.supervisor import Supervisor
from lilbee_workers.systemd import Notifier, watchdog_interval
from lilbee_workers.transport.channel import SocketChannel
from lilbee_workers.transport.frames import (
    FINAL_REPLIES,
    AnyFrame,
    ChatRequest,
    DebugRequest,
    EmbedRequest,
    NoopRequest,
    Request,
    RerankRequest,
    RestartReply,
    RestartRequest,
    StatusReply,
    StatusRequest,
    VisionRequest,
)

_CLIENT_CHECK_S = 0.2
"""How often a connection waiting on a call checks that its client is still there."""

log = structlog.get_logger("lilbee_workers.daemon")

_ROLE_OF: dict[type, str] = {
    EmbedRequest: "embed",
    ChatRequest: "chat",
    RerankRequest: "rerank",
    VisionRequest: "vision",
}
_PEERCRED = struct.Struct("3i")


class Daemon:
    """``Daemon(config, config_path=...).run()`` serves until SIGTERM/SIGINT; returns
    the exit code."""

    def __init__(
        self,
        config: SupervisorConfig,
        *,
        config_path: Path | None = None,
        socket_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.socket_path = socket_path or config.resolved_socket()
        self.notifier = Notifier()
        self.supervisor = Supervisor(config)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._active = 0
        self._lock = threading.Condition()
        self._last_status = ""

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        self._install_signals()
        self._bind()
        self.supervisor.start()
        threading.Thread(target=self._accept_loop, name="accept", daemon=True).start()
        status = self._status_line()
        self.notifier.ready(status)
        self._last_status = status
        log.info("daemon ready", socket=str(self.socket_path), roles=status)
        interval = watchdog_interval()
        try:
            while not self._stop.is_set():
                self._wake.wait(interval if interval is not None else 1.0)
                self._wake.clear()
                if self._reload.is_set():
                    self._reload.clear()
                    self._reload_config()
                if self._stop.is_set():
                    break
                if interval is not None and self._healthy():
                    self.notifier.watchdog()
                status = self._status_line()
                if status != self._last_status:
                    self.notifier.status(status)
                    self._last_status = status
        finally:
            self._shut_down()
        return 0

    def _install_signals(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self._stop.set()
            self._wake.set()

        def reload(signum: int, frame: FrameType | None) -> None:
            self._reload.set()
            self._wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _healthy(self) -> bool:
        """Every role's dispatcher thread alive (a dead one means a bug: let systemd's
        watchdog restart us)."""
        return all(d._thread.is_alive() for d in self.supervisor._dispatchers.values())

    def _status_line(self) -> str:
        return ", ".join(f"{s.role}={s.state}" for s in self.supervisor.status())

    def _reload_config(self) -> None:
        if self.config_path is None:
            log.warning("SIGHUP ignored: the daemon was started without a config file")
            return
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
            changed = self.supervisor.reload(new)
        except (ConfigError, InvalidRequest) as exc:
            log.error("reload rejected; the old config keeps serving", error=str(exc))
            self.notifier.ready(f"reload rejected: {exc}; {self._status_line()}")
            return
        self.config = new
        log.info("config reloaded", restarted=changed)
        self.notifier.ready(self._status_line())

    def _shut_down(self) -> None:
        self.notifier.stopping()
        log.info("daemon stopping: draining calls in flight")
        if self._listener is not None:
            self._listener.close()
        deadline = time.monotonic() + self.config.drain_timeout_s
        with self._lock:
            while self._active and time.monotonic() < deadline:
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.supervisor.close(timeout=max(1.0, deadline - time.monotonic()))
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        self.notifier.close()
        log.info("daemon stopped")

    # ------------------------------------------------------------------ socket

    def _bind(self) -> None:
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise RuntimeError(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # stale, from a daemon that died
            else:
                raise RuntimeError(f"another daemon is already listening on {path}")
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # never world-accessible, even for an instant
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, self.config.socket_mode)
        if self.config.socket_group:
            os.chown(path, -1, grp.getgrnam(self.config.socket_group).gr_gid)
        listener.listen(128)
        self._listener = listener

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            threading.Thread(target=self._serve_client, args=(conn,), daemon=True).start()

    def _peer_allowed(self, conn: socket.socket) -> tuple[bool, int, int]:
        pid, uid, gid = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid in (0, os.getuid()):
            return True, uid, pid
        group = self.config.socket_group
        if group:
            try:
                entry = grp.getgrnam(group)
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                return False, uid, pid
            if gid == entry.gr_gid or name in entry.gr_mem:
                return True, uid, pid
        return False, uid, pid

    def _serve_client(self, conn: socket.socket) -> None:
        channel = SocketChannel(conn, self.config.max_frame_bytes)
        allowed, uid, pid = self._peer_allowed(conn)
        if not allowed:
            log.warning("refused a client", uid=uid, pid=pid)
            try:
                channel.send(AccessDenied(f"uid {uid} may not use this daemon").to_frame(0))
            except OSError:
                pass
            channel.close()
            return
        with self._lock:
            self._connections.add(conn)
        try:
            while not self._stop.is_set():
                try:
                    frame = channel.recv()
                except (EOFError, OSError):
                    return
                except ProtocolError as exc:
                    log.warning("bad frame from a client; closing it", pid=pid, error=exc.message)
                    self._send_quietly(channel, exc.to_frame(0))
                    return
                if not self._handle(channel, frame):
                    return
        finally:
            with self._lock:
                self._connections.discard(conn)
            channel.close()

    def _handle(self, channel: SocketChannel, frame: AnyFrame) -> bool:
        """Answer one frame; False when the connection must close."""
        if isinstance(frame, StatusRequest):
            return self._send_quietly(
                channel, StatusReply(id=frame.id, roles=self.supervisor.status())
            )
        if isinstance(frame, RestartRequest):
            try:
                roles = self.supervisor.restart(frame.role, frame.wait)
            except WorkerError as exc:
                return self._send_quietly(channel, exc.to_frame(frame.id))
            return self._send_quietly(channel, RestartReply(id=frame.id, roles=roles))
        if isinstance(
            frame,
            (EmbedRequest, ChatRequest, RerankRequest, VisionRequest, NoopRequest, DebugRequest),
        ):
            return self._run_request(channel, frame)
        error = ProtocolError(f"the daemon does not accept {type(frame).__name__} frames")
        self._send_quietly(channel, error.to_frame(getattr(frame, "id", 0)))
        return False

    def _run_request(self, channel: SocketChannel, request: Request) -> bool:
        client_id = request.id
        if isinstance(request, (NoopRequest, DebugRequest)):
            role = request.role
        else:
            role = _ROLE_OF[type(request)]
        with self._lock:
            self._active += 1
        try:
            call = self.supervisor.dispatcher(role).submit(
                request, self.supervisor.queue_wait_s, None
            )
            while True:
                reply = call.wait_frame(_CLIENT_CHECK_S)
                if reply is None:  # still queued or running: is the client still there?
                    if _client_gone(channel):
                        call.cancel()  # it went away: skip or stop the call
                        return False
                    continue
                if not self._send_quietly(channel, _with_id(reply, client_id)):
                    call.cancel()  # the client went away mid-stream
                    return False
                if isinstance(reply, FINAL_REPLIES):
                    return True
        except WorkerError as exc:
            return self._send_quietly(channel, exc.to_frame(client_id))
        finally:
            with self._lock:
                self._active -= 1
                self._lock.notify_all()

    @staticmethod
    def _send_quietly(channel: SocketChannel, frame: AnyFrame) -> bool:
        try:
            channel.send(frame)
        except (OSError, ProtocolError):
            return False
        return True


def _client_gone(channel: SocketChannel) -> bool:
    """True when the client has closed its end (EOF or an error waiting to be read)."""
    try:
        return channel.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # connected, nothing sent: still waiting for its answer
    except OSError:
        return True


def _with_id(frame: AnyFrame, request_id: int) -> AnyFrame:
    if hasattr(frame, "id"):
        return msgspec.structs.replace(frame, id=request_id)
    return frame
