"""Encode and decode frames: msgpack through msgspec, typed, size-capped, never pickle."""

from __future__ import annotations

from typing import Any

import msgspec

from lilbee_workers.errors import ProtocolError
from lilbee_workers.transport.frames import AnyFrame, Frame

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame accepted on any wire unless configured otherwise (64 MiB)."""

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[AnyFrame] = msgspec.msgpack.Decoder(AnyFrame)


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
    """Decode one frame; garbage, an unknown tag, a wrong type or an oversized frame
    is a ``ProtocolError``."""
    if len(data) > max_bytes:
        raise ProtocolError(f"frame of {len(data)} bytes is over the {max_bytes}-byte cap")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid frame: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None


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
