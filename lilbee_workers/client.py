"""The remote client: the same methods and exceptions as ``Supervisor``, over the
daemon's Unix socket. Thread-safe: each call takes a pooled connection of its own."""

from __future__ import annotations

import itertools
import os
import socket
import threading
from pathlib import Path

import msgspec

from lilbee_workers.api import CallHandle, WorkerAPI
from lilbee_workers.config import default_socket_path
from lilbee_workers.errors import (
    DaemonUnreachable,
    ProtocolError,
    WorkerTimeout,
    error_from_frame,
)
from lilbee_workers.transport.channel import SocketChannel
from lilbee_workers.transport.codec import DEFAULT_MAX_FRAME_BYTES
from lilbee_workers.transport.frames import (
    FINAL_REPLIES,
    AnyFrame,
    ControlRequest,
    DebugRequest,
    ErrorFrame,
    NoopRequest,
    Request,
    RestartReply,
    RestartRequest,
    RoleStatus,
    StatusReply,
    StatusRequest,
)


class _SocketCall:
    """One request on one pooled connection; the connection goes back to the pool
    after the final frame, and is closed (which cancels the call) otherwise."""

    def __init__(self, client: Client, channel: SocketChannel, request_id: int) -> None:
        self._client = client
        self._channel = channel
        self._id = request_id
        self._done = False

    def next_frame(self, timeout: float | None) -> AnyFrame:
        if self._done:
            raise ProtocolError("the call has already ended")
        try:
            self._channel.sock.settimeout(timeout)
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
            raise error_from_frame(frame)
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
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        connect_timeout: float = 5.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        pool_size: int = 16,
    ) -> None:
        self.socket_path = Path(socket_path or default_socket_path())
        self.connect_timeout = connect_timeout
        self.max_frame_bytes = max_frame_bytes
        self.pool_size = pool_size
        self._pool: list[SocketChannel] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ connections

    def _connect(self) -> SocketChannel:
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
        return SocketChannel(sock, self.max_frame_bytes)

    def _give_back(self, channel: SocketChannel) -> None:
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

    def _send(self, request: Request | ControlRequest) -> _SocketCall:
        request_id = next(self._ids)
        channel = self._connect()
        try:
            channel.send(msgspec.structs.replace(request, id=request_id))
        except OSError:
            channel.close()  # a pooled connection the daemon closed: one fresh try
            channel = self._connect()
            try:
                channel.send(msgspec.structs.replace(request, id=request_id))
            except OSError as exc:
                channel.close()
                raise DaemonUnreachable(
                    f"lost the connection to the daemon at {self.socket_path}: {exc}"
                ) from None
        return _SocketCall(self, channel, request_id)

    def _open(self, role: str, request: Request, timeout: float | None) -> CallHandle:
        if isinstance(request, (NoopRequest, DebugRequest)):
            request = msgspec.structs.replace(request, role=role)
        return self._send(request)

    def status(self) -> list[RoleStatus]:
        frame = self._send(StatusRequest(id=0)).next_frame(30)
        if not isinstance(frame, StatusReply):
            raise ProtocolError(f"expected a status reply, got {type(frame).__name__}")
        return frame.roles

    def restart(self, role: str = "all", wait: bool = True) -> list[RoleStatus]:
        frame = self._send(RestartRequest(id=0, role=role, wait=wait)).next_frame(None)
        if not isinstance(frame, RestartReply):
            raise ProtocolError(f"expected a restart reply, got {type(frame).__name__}")
        return frame.roles
