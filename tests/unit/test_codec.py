"""The wire codec: every frame round-trips; bad bytes are ProtocolError, never a crash."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lilbee_workers.errors import ProtocolError
from lilbee_workers.transport import codec
from lilbee_workers.transport.frames import (
    AnyFrame,
    ChatRequest,
    EmbedRequest,
    Frame,
    Ping,
    RestartReply,
    StatusReply,
)
from lilbee_workers.types import RoleStatus

FRAME_TYPES = AnyFrame.__args__  # type: ignore[attr-defined]


def role_status(replicas: st.SearchStrategy[list[RoleStatus]]) -> st.SearchStrategy[RoleStatus]:
    """Every ``RoleStatus`` field drawn, with ``replicas`` (itself a list of role statuses)
    from the strategy given: drawn freely, the recursion makes huge frames slowly."""
    int64 = st.integers(-(2**63), 2**63 - 1)  # what msgpack carries: no draws thrown away
    by_type: dict[Any, st.SearchStrategy[Any]] = {
        int: int64,
        int | None: st.none() | int64,
        list[int]: st.lists(int64, max_size=14),
        dict[str, int]: st.dictionaries(st.text(max_size=6), int64, max_size=4),
    }
    drawn: dict[str, Any] = {}
    for field in msgspec.structs.fields(RoleStatus):
        if field.name != "replicas":
            drawn[field.name] = by_type.get(field.type, ...)
    return st.builds(RoleStatus, replicas=replicas, **drawn)


@pytest.mark.parametrize("frame_type", FRAME_TYPES, ids=lambda t: t.__name__)
@settings(
    max_examples=40,
    deadline=None,
    # Nested frames (a status reply of role statuses with histograms) are slow to draw
    # on a busy machine; that is not what this test is about.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,  # many drawn ints are beyond 64 bits: assumed away
    ],
)
@given(data=st.data())
def test_every_frame_type_round_trips(frame_type: type[Frame], data: st.DataObject) -> None:
    if frame_type in (StatusReply, RestartReply):  # lists of big structs: keep them short
        roles = st.lists(role_status(st.lists(role_status(st.just([])), max_size=2)), max_size=2)
        frame = data.draw(st.builds(frame_type, roles=roles))
    else:
        frame = data.draw(st.from_type(frame_type))
    try:
        encoded = codec.encode(frame)
    except ProtocolError:  # ints beyond 64 bits cannot travel; that is the answer
        assume(False)
    decoded = codec.decode(encoded)
    assert type(decoded) is frame_type
    assert codec.encode(decoded) == encoded  # byte-equal, so NaN compares too


def test_ints_beyond_64_bits_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="cannot encode"):
        codec.encode(ChatRequest(id=1, messages=[], max_tokens=2**70))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_are_protocol_errors_or_frames(raw: bytes) -> None:
    try:
        frame = codec.decode(raw)
    except ProtocolError:
        return
    assert isinstance(frame, FRAME_TYPES)


def test_unknown_tag_is_protocol_error() -> None:
    raw = msgspec.msgpack.encode({"k": "format_disk", "id": 1})
    with pytest.raises(ProtocolError, match="format_disk|Invalid value"):
        codec.decode(raw)


def test_wrong_field_type_is_protocol_error_naming_the_field() -> None:
    raw = msgspec.msgpack.encode({"k": "embed", "id": 1, "texts": "not a list"})
    with pytest.raises(ProtocolError, match="texts"):
        codec.decode(raw)


def test_truncated_frame_is_protocol_error() -> None:
    raw = codec.encode(ChatRequest(id=3, messages=[], max_tokens=5))
    with pytest.raises(ProtocolError):
        codec.decode(raw[:-3])


def test_oversized_frames_are_refused_both_ways() -> None:
    big = EmbedRequest(id=1, texts=["x" * 2000])
    with pytest.raises(ProtocolError, match="cap"):
        codec.encode(big, max_bytes=1024)
    with pytest.raises(ProtocolError, match="cap"):
        codec.decode(codec.encode(big), max_bytes=1024)


def test_request_id_is_recovered_from_a_bad_frame() -> None:
    raw = msgspec.msgpack.encode({"k": "embed", "id": 77, "texts": 5})
    assert codec.request_id_of(raw) == 77
    assert codec.request_id_of(b"\xc1garbage") == 0


def test_no_pickle_on_the_wire() -> None:
    raw = codec.encode(Ping(seq=1))
    assert not raw.startswith(b"\x80")  # pickle protocol marker
    assert msgspec.msgpack.decode(raw) == {"k": "ping", "seq": 1}
