"""The remote client: the same methods and exceptions as ``Supervisor``, over the
daemon's Unix socket. Thread-safe: each call takes a pooled connection of its own."""

from __future__ import annotations

import itertools
import os
import pwd
import socket
import stat
import struct
import threading
from pathlib import Path

import msgspec

from lilbee_workers.api import CallHandle, WorkerAPI
from lilbee_workers.config import default_socket_path
from lilbee_workers.errors import (
    AccessDenied,
    DaemonUnreachable,
    ProtocolError,
    WorkerError,
    WorkerTimeout,
)
from lilbee_workers.limits import check_timeout
from lilbee_workers.transport import codec
from lilbee_workers.transport.channel import SocketChannel
from lilbee_workers.transport.codec import DEFAULT_MAX_FRAME_BYTES
from lilbee_workers.transport.error_frames import from_frame
from lilbee_workers.transport.frames import (
    FINAL_REPLIES,
    AnyFrame,
    DebugRequest,
    ErrorFrame,
    LoadRequest,
    NoopRequest,
    Request,
    RestartReply,
    RestartRequest,
    SocketCall,
    SocketReply,
    SocketRequest,
    StatusReply,
    StatusRequest,
    UnloadRequest,
)
from lilbee_workers.types import RoleStatus

_PEERCRED = struct.Struct("3i")
_DAEMON_GRACE_S = 1.0
DAEMON_USER_ENV = "LILBEE_WORKERS_DAEMON_USER"
"""Names a user (or uid) the client trusts to run the daemon, besides itself and root."""


class _SocketCall:
    """One request on one pooled connection; the connection goes back to the pool
    after the final frame, and is closed (which cancels the call) otherwise."""

    def __init__(
        self, client: Client, channel: SocketChannel[SocketReply], request_id: int
    ) -> None:
        self._client = client
        self._channel = channel
        self._id = request_id
        self._done = False

    def next_frame(self, timeout: float | None) -> AnyFrame:
        if self._done:
            raise ProtocolError("the call has already ended")
        try:
            # The daemon keeps the caller's deadline and answers WorkerTimeout itself;
            # waiting a moment longer lets that typed answer arrive first.
            self._channel.sock.settimeout(None if timeout is None else timeout + _DAEMON_GRACE_S)
            while True:
                frame = self._channel.recv()
                if getattr(frame, "id", None) in (self._id, 0):
                    break
        except TimeoutError:
            self.cancel()
            raise WorkerTimeout("the daemon did not answer within the timeout; cancelled") from None
        except (EOFError, OSError) as exc:
            self._abandon()
            raise DaemonUnreachable(
                f"lost the connection to the daemon at {self._client.socket_path}: {exc}"
            ) from None
        except ProtocolError:
            self._abandon()
            raise
        if isinstance(frame, FINAL_REPLIES):
            self._done = True
            self._client._give_back(self._channel)
        if isinstance(frame, ErrorFrame):
            raise from_frame(frame)
        return frame

    def cancel(self) -> None:
        """Close the connection: the daemon cancels the call in the worker."""
        if not self._done:
            self._abandon()

    def _abandon(self) -> None:
        self._done = True
        self._channel.close()


class Client(WorkerAPI):
    """Talk to a running ``lilbee-workers serve``.

    ``socket_path``: default ``$LILBEE_WORKERS_SOCKET``, else
    ``$XDG_RUNTIME_DIR/lilbee-workers.sock``.

    Before sending anything the client checks who runs the daemon (``SO_PEERCRED``):
    yourself, root, ``daemon_user`` (a user name or uid; default
    ``$LILBEE_WORKERS_DAEMON_USER``), or the owner of a socket directory that only root
    could have made for it (such as systemd's ``/run/lilbee-workers``, in a root-owned
    parent no one else may write). Anyone else is refused with ``AccessDenied``: on a
    shared ``/tmp`` another user could have put a socket where you expect the daemon.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        connect_timeout: float = 5.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        pool_size: int = 16,
        daemon_user: str | int | None = None,
    ) -> None:
        self.socket_path = Path(socket_path or default_socket_path())
        self.connect_timeout = connect_timeout
        self.max_frame_bytes = max_frame_bytes
        self.pool_size = pool_size
        self.daemon_user = (
            daemon_user if daemon_user is not None else os.environ.get(DAEMON_USER_ENV)
        )
        self._pool: list[SocketChannel[SocketReply]] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ connections

    def _connect(self) -> SocketChannel[SocketReply]:
        with self._lock:
            if self._pool:
                return self._pool.pop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(
                f"cannot reach the lilbee-workers daemon at {self.socket_path}: "
                f"{exc.strerror or exc} (is `lilbee-workers serve` running? "
                "set --socket or LILBEE_WORKERS_SOCKET)"
            ) from None
        try:
            self._check_daemon_owner(sock)
        except BaseException:
            sock.close()
            raise
        return SocketChannel(sock, codec.FROM_DAEMON, self.max_frame_bytes)

    def _check_daemon_owner(self, sock: socket.socket) -> None:
        """Refuse a daemon run by a user we have no reason to trust."""
        _, uid, _ = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid in (os.getuid(), 0) or uid == self._trusted_uid():
            return
        if _provisioned_for(self.socket_path, uid):
            return
        name = _user_name(uid)
        raise AccessDenied(
            f"the daemon at {self.socket_path} runs as {name} (uid {uid}), not as you or "
            "root, and its socket directory could have been made by anyone: refusing to "
            f"send it anything. If {name} runs your lilbee-workers service, trust it with "
            f"{DAEMON_USER_ENV}={name} (or Client(daemon_user=...))"
        )

    def _trusted_uid(self) -> int | None:
        user = self.daemon_user
        if user is None or user == "":
            return None
        if isinstance(user, int):
            return user
        if user.isdigit():
            return int(user)
        try:
            return pwd.getpwnam(user).pw_uid
        except KeyError:
            raise AccessDenied(
                f"{DAEMON_USER_ENV} / daemon_user names no user {user!r} on this system"
            ) from None

    def _give_back(self, channel: SocketChannel[SocketReply]) -> None:
        with self._lock:
            if len(self._pool) < self.pool_size:
                self._pool.append(channel)
                return
        channel.close()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, []
        for channel in pool:
            channel.close()

    def __enter__(self) -> Client:
        return self

    # ------------------------------------------------------------------ API

    def _send(self, request: SocketRequest) -> _SocketCall:
        request_id = next(self._ids)
        channel = self._connect()
        try:
            channel.send(msgspec.structs.replace(request, id=request_id))
        except OSError:
            refusal = _refusal(channel)  # e.g. Overloaded: over the daemon's connection cap
            channel.close()
            if refusal is not None:
                raise refusal from None
            channel = self._connect()  # a pooled connection the daemon closed: one fresh try
            try:
                channel.send(msgspec.structs.replace(request, id=request_id))
            except OSError as exc:
                channel.close()
                raise DaemonUnreachable(
                    f"lost the connection to the daemon at {self.socket_path}: {exc}"
                ) from None
        return _SocketCall(self, channel, request_id)

    def _open(self, role: str, request: Request, timeout: float | None) -> CallHandle:
        check_timeout(timeout)
        if isinstance(request, (NoopRequest, DebugRequest)):
            request = msgspec.structs.replace(request, role=role)
        return self._send(SocketCall(id=0, request=request, timeout_s=timeout))

    def status(self) -> list[RoleStatus]:
        frame = self._send(StatusRequest(id=0)).next_frame(30)
        if not isinstance(frame, StatusReply):
            raise ProtocolError(f"expected a status reply, got {type(frame).__name__}")
        return frame.roles

    def restart(self, role: str = "all", wait: bool = True) -> list[RoleStatus]:
        return self._roles_reply(RestartRequest(id=0, role=role, wait=wait))

    def load(self, role: str, model: str) -> list[RoleStatus]:
        return self._roles_reply(LoadRequest(id=0, role=role, model=model))

    def unload(self, role: str) -> list[RoleStatus]:
        return self._roles_reply(UnloadRequest(id=0, role=role))

    def _roles_reply(
        self, request: RestartRequest | LoadRequest | UnloadRequest
    ) -> list[RoleStatus]:
        frame = self._send(request).next_frame(None)
        if not isinstance(frame, RestartReply):
            raise ProtocolError(f"expected a roles reply, got {type(frame).__name__}")
        return frame.roles


def _refusal(channel: SocketChannel[SocketReply]) -> WorkerError | None:
    """The error a daemon sent just before closing this connection, if any."""
    try:
        channel.sock.settimeout(1.0)
        frame = channel.recv()
    except (OSError, EOFError, ProtocolError):
        return None
    return from_frame(frame) if isinstance(frame, ErrorFrame) else None


def _provisioned_for(socket_path: Path, uid: int) -> bool:
    """True when the socket's directory belongs to ``uid``, no one else may write it,
    and it sits in a root-owned directory no one else may write: only root could have
    made it for that user (systemd's ``RuntimeDirectory=`` does exactly this)."""
    directory = Path(os.path.realpath(socket_path)).parent
    try:
        own = os.stat(directory)
        parent = os.stat(directory.parent)
    except OSError:
        return False
    writable_by_others = stat.S_IWGRP | stat.S_IWOTH
    return (
        own.st_uid == uid
        and not own.st_mode & writable_by_others
        and parent.st_uid == 0
        and not parent.st_mode & writable_by_others
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
