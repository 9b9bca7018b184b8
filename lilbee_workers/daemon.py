"""The daemon: a Supervisor behind a Unix socket, with signals and systemd notify.

Frames on the socket are the same msgspec Structs as on the pipes, each behind a 4-byte
length prefix. One thread per connection, at most ``max_connections`` of them (one more
is answered ``Overloaded``); a connection runs one request at a time (clients open
several connections for concurrency). A client that disconnects while its stream runs
cancels the call. No background thread (accept loop, connections, reload) dies on an
error: it logs it, counts it, and keeps serving.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import resource
import select
import signal
import socket
import stat
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

import msgspec
import structlog

from lilbee_workers.config import SupervisorConfig, load_config
from lilbee_workers.errors import (
    AccessDenied,
    ConfigError,
    InvalidRequest,
    Overloaded,
    ProtocolError,
    WorkerError,
)
from lilbee_workers.limits import check_request
from lilbee_workers.supervisor import Supervisor
from lilbee_workers.systemd import Notifier, watchdog_interval
from lilbee_workers.transport.channel import SocketChannel, encode_prefixed
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
_ACCEPT_POLL_S = 0.5
"""How long one ``accept`` waits before the accept loop looks at the stop flag again."""
_ACCEPT_BACKOFF_S = (0.05, 1.0)
"""First and longest pause after a failed ``accept`` (EMFILE: out of file descriptors)."""
_REFUSAL_LOG_EVERY_S = 5.0
"""At most one log line per this many seconds about connections refused over the cap."""
_FD_RESERVE = 64
"""File descriptors the daemon needs besides its connections (workers' pipes, logs)."""

log = structlog.get_logger("lilbee_workers.daemon")

_ROLE_OF: dict[type, str] = {
    EmbedRequest: "embed",
    ChatRequest: "chat",
    RerankRequest: "rerank",
    VisionRequest: "vision",
}
_PEERCRED = struct.Struct("3i")


class DaemonSetupError(RuntimeError):
    """The daemon cannot set up its socket safely; the message says what to fix."""


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
        self.socket_gid = socket_group_id(config.socket_group)
        self.notifier = Notifier()
        self.supervisor = Supervisor(config)
        self.thread_errors: Counter[str] = Counter()
        """Unexpected errors caught per background thread kind (accept, connection, reload)."""
        self.refused_over_cap = 0
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._active = 0
        self._lock = threading.Condition()
        self._reload_lock = threading.Lock()
        self._reloading = False
        self._reload_again = False
        self._last_refusal_log = 0.0
        self._last_status = ""

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        self._install_signals()
        self._bind()
        self._warn_if_few_fds()
        self.supervisor.start()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="accept", daemon=True)
        self._accept_thread.start()
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
                    self._start_reload()
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
        """The accept loop and every role's dispatcher thread alive (a dead one means a
        bug: let systemd's watchdog restart us)."""
        accept = self._accept_thread
        return accept is not None and accept.is_alive() and self.supervisor.healthy()

    def _status_line(self) -> str:
        return ", ".join(f"{s.role}={s.state}" for s in self.supervisor.status())

    def _count_error(self, thread_kind: str) -> int:
        with self._lock:
            self.thread_errors[thread_kind] += 1
            return self.thread_errors[thread_kind]

    # ------------------------------------------------------------------ reload

    def _start_reload(self) -> None:
        """Reload in a thread of its own, so the main loop keeps feeding the watchdog and
        answering SIGTERM. SIGHUPs during a reload coalesce into one more reload after
        it (which reads the file as it is then)."""
        with self._reload_lock:
            if self._reloading:
                self._reload_again = True
                log.info("SIGHUP during a reload: one more reload follows this one")
                return
            self._reloading = True
        threading.Thread(target=self._reload_thread, name="reload", daemon=True).start()

    def _reload_thread(self) -> None:
        while True:
            try:
                self._reload_config()
            except Exception as exc:
                count = self._count_error("reload")
                log.exception(
                    "reload failed unexpectedly; the old config keeps serving",
                    error=repr(exc),
                    errors=count,
                )
            with self._reload_lock:
                if not self._reload_again or self._stop.is_set():
                    self._reloading = False
                    self._reload_again = False
                    return
                self._reload_again = False

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
            if not self._stop.is_set():
                self.notifier.ready(f"reload rejected: {exc}; {self._status_line()}")
            return
        self.config = new
        log.info("config reloaded", restarted=changed)
        if not self._stop.is_set():
            self.notifier.ready(self._status_line())

    # ------------------------------------------------------------------ shutdown

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
        prepare_socket_dir(path.parent)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise DaemonSetupError(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # stale, from a daemon that died
            else:
                raise DaemonSetupError(f"another daemon is already listening on {path}")
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # never world-accessible, even for an instant
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_umask)
        try:
            # The directory is ours and not writable by others (checked above), so the
            # socket cannot have been swapped for a link: chown/chmod act on our socket.
            if self.socket_gid is not None:
                give_to_group(path, self.socket_gid, self.config.socket_group)
            os.chmod(path, self.config.socket_mode)
        except BaseException:
            listener.close()
            path.unlink(missing_ok=True)
            raise
        listener.listen(128)
        listener.settimeout(_ACCEPT_POLL_S)
        self._listener = listener

    def _warn_if_few_fds(self) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and self.config.max_connections + _FD_RESERVE > soft:
            log.warning(
                "max_connections is close to the open-file limit: past it, new connections"
                " wait until some close (raise LimitNOFILE / ulimit -n, or lower"
                " max_connections)",
                max_connections=self.config.max_connections,
                open_file_limit=soft,
            )

    def _accept_loop(self) -> None:
        """Accept until the listener is closed. Errors (EMFILE/ENFILE when out of file
        descriptors, anything unexpected) are logged and counted, then accepting goes on
        after a short, growing pause."""
        listener = self._listener
        assert listener is not None
        pause = _ACCEPT_BACKOFF_S[0]
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except Exception as exc:
                if self._stop.is_set() or listener.fileno() < 0:
                    return  # the listener was closed: shutting down
                count = self._count_error("accept")
                code = getattr(exc, "errno", None)
                log.error(
                    "accept failed; pausing, then accepting again",
                    error=str(exc),
                    errno=errno.errorcode.get(code, code) if code is not None else None,
                    pause_s=pause,
                    errors=count,
                    connections=len(self._connections),
                )
                self._stop.wait(pause)
                pause = min(pause * 2, _ACCEPT_BACKOFF_S[1])
                continue
            pause = _ACCEPT_BACKOFF_S[0]
            try:
                self._admit(conn)
            except Exception as exc:
                count = self._count_error("accept")
                log.exception("could not start serving a connection", error=repr(exc), errors=count)
                with self._lock:
                    self._connections.discard(conn)
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        """Give a new connection a thread, or answer ``Overloaded`` past the cap."""
        conn.settimeout(None)  # blocking; frame deadlines are the channel's business
        with self._lock:
            over = len(self._connections) >= self.config.max_connections
            if not over:
                self._connections.add(conn)
        if over:
            self._refuse_over_cap(conn)
            return
        threading.Thread(
            target=self._serve_client, args=(conn,), name="connection", daemon=True
        ).start()

    def _refuse_over_cap(self, conn: socket.socket) -> None:
        limit = self.config.max_connections
        self.refused_over_cap += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= _REFUSAL_LOG_EVERY_S:
            self._last_refusal_log = now
            log.warning(
                "connection limit reached; refusing new clients",
                max_connections=limit,
                refused_so_far=self.refused_over_cap,
            )
        error = Overloaded(
            f"the daemon already serves {limit} connections (max_connections); "
            "close idle ones or retry later"
        )
        try:
            data = encode_prefixed(error.to_frame(0), self.config.max_frame_bytes)
            conn.send(data, socket.MSG_DONTWAIT)  # a fresh socket's buffer has room
        except OSError:
            pass
        conn.close()

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
        """One connection's thread: whatever goes wrong closes this connection only."""
        channel = SocketChannel(conn, self.config.max_frame_bytes, self.config.frame_timeout_s)
        try:
            self._converse(channel)
        except Exception as exc:
            count = self._count_error("connection")
            log.exception(
                "unexpected error serving a client; closing that connection only",
                error=repr(exc),
                errors=count,
            )
            self._send_quietly(
                channel,
                WorkerError(f"internal daemon error: {exc!r}; connection closed").to_frame(0),
            )
        finally:
            with self._lock:
                self._connections.discard(conn)
            channel.close()

    def _converse(self, channel: SocketChannel) -> None:
        allowed, uid, pid = self._peer_allowed(channel.sock)
        if not allowed:
            log.warning("refused a client", uid=uid, pid=pid)
            self._send_quietly(
                channel, AccessDenied(f"uid {uid} may not use this daemon").to_frame(0)
            )
            return
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
        call = None
        try:
            check_request(role, request, self.supervisor.config)
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
                    call.cancel()  # the client went away mid-stream (or stopped reading)
                    return False
                if isinstance(reply, FINAL_REPLIES):
                    return True
        except WorkerError as exc:
            return self._send_quietly(channel, exc.to_frame(client_id))
        except BaseException:
            if call is not None:
                call.cancel()  # nobody will read this call's answer
            raise
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


def socket_group_id(group: str) -> int | None:
    """The gid of ``socket_group`` (a name, or a number); None when unset. An unknown
    group is a ``ConfigError`` naming the key."""
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ConfigError(
            f"socket_group: no group named {group!r} on this system "
            f"(create it: sudo groupadd --system {group}; or unset socket_group)"
        ) from None


def give_to_group(path: Path, gid: int, group: str) -> None:
    """``chown :group path``, with a clear error when we may not."""
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        user = pwd.getpwuid(os.getuid()).pw_name if _has_passwd_entry() else str(os.getuid())
        raise DaemonSetupError(
            f"cannot give the socket {path} to group {group!r} (socket_group): the daemon's "
            f"user {user!r} must be a member of that group (sudo usermod -aG {group} {user},"
            " then restart the service) or the daemon must run as root"
        ) from None


def _has_passwd_entry() -> bool:
    try:
        pwd.getpwuid(os.getuid())
    except KeyError:
        return False
    return True


def prepare_socket_dir(directory: Path) -> None:
    """Create the socket's directory (mode 0700) if it is missing; refuse one that
    another user owns or that group/others may write (they could replace the socket
    and receive the texts sent to it)."""
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # someone made it meanwhile: the checks below judge it
        info = os.lstat(directory)
    me = os.getuid()
    if stat.S_ISLNK(info.st_mode):
        if info.st_uid not in (me, 0):
            raise DaemonSetupError(
                f"socket directory {directory} is a symlink owned by uid {info.st_uid}, not "
                f"by you (uid {me}); remove it, or set `socket` (--socket, "
                "LILBEE_WORKERS_SOCKET) to a path in a directory you own"
            )
        info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise DaemonSetupError(f"socket directory {directory} is not a directory")
    if info.st_uid not in (me, 0):
        raise DaemonSetupError(
            f"socket directory {directory} is owned by uid {info.st_uid}, not by you "
            f"(uid {me}): another user could replace the socket and read what clients "
            "send. Remove that directory, or set `socket` (--socket, LILBEE_WORKERS_SOCKET)"
            " to a path in a directory you own, such as $XDG_RUNTIME_DIR"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise DaemonSetupError(
            f"socket directory {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):#o}): another user could replace the socket."
            f" Run `chmod go-w {directory}`, or use a directory only you can write"
        )


def _client_gone(channel: SocketChannel) -> bool:
    """True when the client has closed its end (EOF or an error waiting to be read).
    Never blocks, whatever the socket's timeout."""
    poller = select.poll()
    poller.register(channel.sock, select.POLLIN)
    if not poller.poll(0):
        return False  # connected, nothing sent: still waiting for its answer
    try:
        return channel.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, TimeoutError):
        return False
    except OSError:
        return True


def _with_id(frame: AnyFrame, request_id: int) -> AnyFrame:
    if hasattr(frame, "id"):
        return msgspec.structs.replace(frame, id=request_id)
    return frame
