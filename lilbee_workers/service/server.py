"""The daemon's socket server: accept connections (at most ``max_connections``), and
on each, read request frames, run them on the supervisor, and write the replies.

One thread per connection; a connection runs one request at a time (clients open
several connections for concurrency). A client that disconnects while its call waits
or streams cancels the call. No thread here dies on an error: it logs it, counts it,
and keeps serving (or closes only the connection concerned).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import resource
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

import msgspec
import structlog

from lilbee_workers.config import SupervisorConfig
from lilbee_workers.errors import AccessDenied, Overloaded, ProtocolError, WorkerError
from lilbee_workers.supervisor import Supervisor
from lilbee_workers.transport import codec
from lilbee_workers.transport.channel import SocketChannel, encode_prefixed
from lilbee_workers.transport.error_frames import to_frame
from lilbee_workers.transport.frames import (
    FINAL_REPLIES,
    AnyFrame,
    LoadRequest,
    Request,
    RestartReply,
    RestartRequest,
    SocketRequest,
    StatusReply,
    StatusRequest,
    UnloadRequest,
    role_of,
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
_PEERCRED = struct.Struct("3i")

log = structlog.get_logger("lilbee_workers.service.server")


class SocketServer:
    """Serves a bound listener until ``stop`` is set; ``drain`` waits for calls in flight."""

    def __init__(
        self,
        listener: socket.socket,
        config: SupervisorConfig,
        supervisor: Supervisor,
        stop: threading.Event,
        count_error: Callable[[str], int],
    ) -> None:
        self.config = config
        self.supervisor = supervisor
        self.refused_over_cap = 0
        self._listener = listener
        self._stop = stop
        self._count_error = count_error
        self._connections: set[socket.socket] = set()
        self._active = 0
        self._lock = threading.Condition()
        self._last_refusal_log = 0.0
        self._accept_thread: threading.Thread | None = None

    def start(self) -> None:
        self._listener.settimeout(_ACCEPT_POLL_S)
        self._warn_if_few_fds()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="accept", daemon=True)
        self._accept_thread.start()

    def alive(self) -> bool:
        """The accept loop runs (what the watchdog checks, beside the supervisor)."""
        thread = self._accept_thread
        return thread is not None and thread.is_alive()

    def drain(self, deadline: float) -> None:
        """Stop accepting; wait until ``deadline`` for calls in flight; cut the rest."""
        self._listener.close()
        with self._lock:
            while self._active and time.monotonic() < deadline:
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

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
            data = encode_prefixed(to_frame(error, 0), self.config.max_frame_bytes)
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
        channel = SocketChannel(
            conn, codec.TO_DAEMON, self.config.max_frame_bytes, self.config.frame_timeout_s
        )
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
                to_frame(WorkerError(f"internal daemon error: {exc!r}; connection closed"), 0),
            )
        finally:
            with self._lock:
                self._connections.discard(conn)
            channel.close()

    def _converse(self, channel: SocketChannel[SocketRequest]) -> None:
        allowed, uid, pid = self._peer_allowed(channel.sock)
        if not allowed:
            log.warning("refused a client", uid=uid, pid=pid)
            self._send_quietly(
                channel, to_frame(AccessDenied(f"uid {uid} may not use this daemon"), 0)
            )
            return
        while not self._stop.is_set():
            try:
                frame = channel.recv()
            except (EOFError, OSError):
                return
            except ProtocolError as exc:
                log.warning("bad frame from a client; closing it", pid=pid, error=exc.message)
                self._send_quietly(channel, to_frame(exc, 0))
                return
            if not self._handle(channel, frame):
                return

    def _handle(self, channel: SocketChannel[SocketRequest], frame: SocketRequest) -> bool:
        """Answer one frame; False when the connection must close."""
        if isinstance(frame, StatusRequest):
            return self._send_quietly(
                channel, StatusReply(id=frame.id, roles=self.supervisor.status())
            )
        if isinstance(frame, (RestartRequest, LoadRequest, UnloadRequest)):
            try:
                if isinstance(frame, RestartRequest):
                    roles = self.supervisor.restart(frame.role, frame.wait)
                elif isinstance(frame, LoadRequest):
                    roles = self.supervisor.load(frame.role, frame.model)
                else:
                    roles = self.supervisor.unload(frame.role)
            except WorkerError as exc:
                return self._send_quietly(channel, to_frame(exc, frame.id))
            return self._send_quietly(channel, RestartReply(id=frame.id, roles=roles))
        request = msgspec.structs.replace(frame.request, id=frame.id)
        return self._run_request(channel, request, frame.timeout_s)

    def _run_request(
        self, channel: SocketChannel[SocketRequest], request: Request, timeout: float | None
    ) -> bool:
        """Relay one call's replies; its deadline is the caller's ``timeout``: at it the
        call is cancelled and the caller answered ``WorkerTimeout``, queued or running."""
        client_id = request.id
        role = role_of(request)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._active += 1
        call = None
        try:
            call = self.supervisor.submit(role, request, timeout)
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                reply: AnyFrame | None
                if left is not None and left <= _CLIENT_CHECK_S:
                    reply = call.next_frame(max(0.0, left))  # WorkerTimeout at the deadline
                else:
                    reply = call.wait_frame(_CLIENT_CHECK_S)
                if reply is None:  # still queued or running: is the client still there?
                    if _client_gone(channel):
                        call.cancel()  # it went away: skip or stop the call
                        return False
                    continue
                if not self._send_quietly(channel, reply):  # it carries the client's id
                    call.cancel()  # the client went away mid-stream (or stopped reading)
                    return False
                if isinstance(reply, FINAL_REPLIES):
                    return True
        except WorkerError as exc:
            return self._send_quietly(channel, to_frame(exc, client_id))
        except BaseException:
            if call is not None:
                call.cancel()  # nobody will read this call's answer
            raise
        finally:
            with self._lock:
                self._active -= 1
                self._lock.notify_all()

    @staticmethod
    def _send_quietly(channel: SocketChannel[SocketRequest], frame: AnyFrame) -> bool:
        try:
            channel.send(frame)
        except (OSError, ProtocolError):
            return False
        return True


def _client_gone(channel: SocketChannel[SocketRequest]) -> bool:
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
