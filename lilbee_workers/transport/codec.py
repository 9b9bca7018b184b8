"""Encode and decode frames: msgpack through msgspec, typed, size-capped, never pickle."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from lilbee_workers.errors import ProtocolError
from lilbee_workers.transport.frames import (
    AnyFrame,
    DataReply,
    Frame,
    HealthCommand,
    HealthReport,
    Request,
    SocketReply,
    SocketRequest,
)

F = TypeVar("F")

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame accepted on any wire unless configured otherwise (64 MiB)."""

_encoder = msgspec.msgpack.Encoder()


class Wire(Generic[F]):
    """What one direction of one wire carries, with its own typed decoder."""

    def __init__(self, name: str, frames: Any) -> None:
        self.name = name
        self._decoder: msgspec.msgpack.Decoder[F] = msgspec.msgpack.Decoder(frames)

    def decode(self, data: bytes | memoryview, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> F:
        """Decode one frame; garbage, a tag this wire does not carry, a wrong type or an
        oversized frame is a ``ProtocolError``."""
        if len(data) > max_bytes:
            raise ProtocolError(f"frame of {len(data)} bytes is over the {max_bytes}-byte cap")
        try:
            return self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise ProtocolError(f"invalid frame on the {self.name}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"undecodable frame: {exc}") from None


TO_WORKER: Wire[Request] = Wire("data pipe", Request)
FROM_WORKER: Wire[DataReply] = Wire("data pipe", DataReply)
TO_HEARTBEAT: Wire[HealthCommand] = Wire("health pipe", HealthCommand)
FROM_HEARTBEAT: Wire[HealthReport] = Wire("health pipe", HealthReport)
TO_DAEMON: Wire[SocketRequest] = Wire("daemon socket", SocketRequest)
FROM_DAEMON: Wire[SocketReply] = Wire("daemon socket", SocketReply)
ANY_WIRE: Wire[AnyFrame] = Wire("wire", AnyFrame)


def encode(frame: Frame, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Encode one frame; a frame over ``max_bytes`` is a ``ProtocolError``."""
    try:
        data = _encoder.encode(frame)
    except (OverflowError, TypeError, msgspec.EncodeError) as exc:
        raise ProtocolError(f"cannot encode {type(frame).__name__}: {exc}") from None
    if len(data) > max_bytes:
        raise ProtocolError(
            f"{type(frame).__name__} frame is {len(data)} bytes, over the {max_bytes}-byte cap"
        )
    return data


def decode(data: bytes | memoryview, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> AnyFrame:
    """Decode one frame of any kind (tools and tests; receivers use their ``Wire``)."""
    return ANY_WIRE.decode(data, max_bytes)


def request_id_of(data: bytes | memoryview) -> int:
    """Best-effort request id of a frame that failed to decode (0 when unknown)."""
    try:
        raw: Any = msgspec.msgpack.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return 0
    if isinstance(raw, dict):
        value = raw.get("id")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


class _Tagged(msgspec.Struct):
    k: str = ""


_tag_decoder = msgspec.msgpack.Decoder(_Tagged)


def tag_of(data: bytes | memoryview) -> str:
    """A frame's tag (``"embed"``, ``"chat"``...) without decoding the rest of it into
    objects; empty when it has none (a relay routes by it and lets the receiver judge)."""
    try:
        return _tag_decoder.decode(data).k
    except (msgspec.DecodeError, RecursionError):
        return ""
