"""Frame channels: a ``multiprocessing`` pipe end, and a length-prefixed stream socket.

Both move the same frames through the same codec; only the framing differs. Sends are
serialised by a lock so several threads may share one channel end.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from multiprocessing.connection import Connection
from typing import Generic, TypeVar

from lilbee_workers.errors import ProtocolError
from lilbee_workers.transport import codec
from lilbee_workers.transport.frames import Frame

R = TypeVar("R")

_LENGTH = struct.Struct("!I")


class PipeChannel(Generic[R]):
    """One end of a pipe (a socket pair wrapped in a ``multiprocessing`` ``Connection``),
    speaking frames with ``send_bytes``; it decodes only what ``receives`` carries."""

    def __init__(
        self,
        conn: Connection,
        receives: codec.Wire[R],
        max_frame_bytes: int = codec.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.conn = conn
        self.receives = receives
        self.max_frame_bytes = max_frame_bytes
        self._send_lock = threading.Lock()

    def send(self, frame: Frame) -> None:
        """Encode and send one frame (raises ``ProtocolError`` if it is over the cap)."""
        data = codec.encode(frame, self.max_frame_bytes)
        with self._send_lock:
            self.conn.send_bytes(data)

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are; for tests that inject malformed frames."""
        with self._send_lock:
            self.conn.send_bytes(data)

    def recv_raw(self) -> bytes:
        """One frame's bytes; ``EOFError`` when the peer is gone."""
        return self.conn.recv_bytes()

    def recv(self) -> R:
        """One decoded frame; ``ProtocolError`` for a bad one, ``EOFError`` at the end."""
        return self.receives.decode(self.recv_raw(), self.max_frame_bytes)

    def poll(self, timeout: float = 0.0) -> bool:
        return self.conn.poll(timeout)

    def close(self) -> None:
        self.conn.close()


class SocketChannel(Generic[R]):
    """A stream socket speaking frames behind a 4-byte big-endian length prefix.

    A length over the cap is refused before any of the body is read. With
    ``frame_timeout``, waiting for a frame to *start* is unlimited (an idle connection
    may stay open), but once its first byte has arrived the rest must arrive within
    ``frame_timeout`` seconds, and a send must complete within it too; otherwise
    ``ProtocolError`` (receive) or ``TimeoutError`` (send). Timeouts need the channel to
    be used by one thread at a time.
    """

    def __init__(
        self,
        sock: socket.socket,
        receives: codec.Wire[R],
        max_frame_bytes: int = codec.DEFAULT_MAX_FRAME_BYTES,
        frame_timeout: float | None = None,
    ) -> None:
        self.sock = sock
        self.receives = receives
        self.max_frame_bytes = max_frame_bytes
        self.frame_timeout = frame_timeout
        self._send_lock = threading.Lock()

    def send(self, frame: Frame) -> None:
        data = codec.encode(frame, self.max_frame_bytes)
        with self._send_lock:
            if self.frame_timeout is not None:
                self.sock.settimeout(self.frame_timeout)
            self.sock.sendall(_LENGTH.pack(len(data)) + data)

    def recv(self) -> R:
        """One decoded frame; ``EOFError`` when the peer closed between frames."""
        deadline: float | None = None
        if self.frame_timeout is not None:
            self.sock.settimeout(None)  # idle between frames: no limit
            first = self.sock.recv(1)
            if not first:
                raise EOFError("peer closed the connection")
            deadline = time.monotonic() + self.frame_timeout
            header = first + self._recv_exactly(_LENGTH.size - 1, deadline)
        else:
            header = self._recv_exactly(_LENGTH.size, None, at_boundary=True)
        (length,) = _LENGTH.unpack(header)
        if length > self.max_frame_bytes:
            raise ProtocolError(
                f"frame length {length} is over the {self.max_frame_bytes}-byte cap"
            )
        return self.receives.decode(self._recv_exactly(length, deadline), self.max_frame_bytes)

    def _recv_exactly(
        self, size: int, deadline: float | None, *, at_boundary: bool = False
    ) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._too_slow()
                self.sock.settimeout(remaining)
            try:
                part = self.sock.recv(min(size - len(buf), 1 << 20))
            except TimeoutError:
                if deadline is None:
                    raise
                raise self._too_slow() from None
            if not part:
                if at_boundary and not buf:
                    raise EOFError("peer closed the connection")
                raise ProtocolError("connection closed in the middle of a frame")
            buf += part
        return bytes(buf)

    def _too_slow(self) -> ProtocolError:
        return ProtocolError(
            f"frame not completed within {self.frame_timeout:g} s of its first byte "
            "(frame_timeout_s)"
        )

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def encode_prefixed(frame: Frame, max_frame_bytes: int = codec.DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """A frame with its length prefix, for asyncio writers."""
    data = codec.encode(frame, max_frame_bytes)
    return _LENGTH.pack(len(data)) + data


LENGTH_PREFIX = _LENGTH
