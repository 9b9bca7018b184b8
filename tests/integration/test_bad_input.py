"""Property-based bad input through the real daemon and workers: every hostile request
gets a typed answer (ProtocolError / InvalidRequest, or a correct result), and neither a
worker nor the daemon dies."""

from __future__ import annotations

import math
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FAST
from daemon_helpers import DaemonProcess, write_config
from lilbee_workers.transport import codec
from lilbee_workers.transport.channel import SocketChannel
from lilbee_workers.transport.frames import (
    FINAL_REPLIES,
    ChatChunk,
    ErrorFrame,
)

OUTCOMES: Counter[str] = Counter()
TIMING = {k: v for k, v in FAST.items() if k != "debug_requests"}

weird_floats = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e308, 0.5])
weird_ints = st.one_of(st.integers(-(2**63), -1), st.sampled_from([0, 1, 2, 2**40]))
anything = st.one_of(
    st.none(),
    st.booleans(),
    weird_ints,
    weird_floats,
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
)
texts = st.one_of(st.text(max_size=50), st.just("bee " * 5000), st.just(""))
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "wizard", ""]), "content": texts}
    ),
    max_size=3,
)

ids = st.integers(1, 1000)
int64 = st.integers(-(2**63), 2**63 - 1)
# Well-typed, hostile values: these reach the workers' own validation.
well_typed = st.one_of(
    st.fixed_dictionaries(
        {"k": st.just("embed"), "id": ids, "texts": st.lists(texts, max_size=3)},
        optional={"normalize": st.booleans(), "truncate": st.booleans()},
    ),
    st.fixed_dictionaries(
        {"k": st.just("chat"), "id": ids, "messages": messages, "max_tokens": st.integers(-5, 6)},
        optional={
            "temperature": weird_floats,
            "top_p": weird_floats,
            "seed": int64,
            "stop": st.lists(st.text(max_size=3), max_size=2),
        },
    ),
    st.fixed_dictionaries(
        {
            "k": st.just("rerank"),
            "id": ids,
            "query": texts,
            "documents": st.lists(texts, max_size=3),
        },
        optional={"top_n": st.one_of(st.none(), st.integers(-3, 3)), "truncate": st.booleans()},
    ),
    st.fixed_dictionaries(
        {"k": st.just("vision"), "id": ids, "image": st.binary(max_size=64)},
        optional={"prompt": texts, "max_tokens": st.integers(-3, 3)},
    ),
)
# Wrong types, unknown kinds, junk maps: the decoder's ProtocolError.
wrong_typed = st.one_of(
    st.fixed_dictionaries(
        {
            "k": st.sampled_from(["embed", "chat", "rerank"]),
            "id": anything,
            "texts": anything,
            "messages": anything,
            "documents": anything,
        }
    ),
    st.fixed_dictionaries(
        {"k": st.sampled_from(["noop", "ping", "status_result", "nope", ""]), "id": anything}
    ),
    st.dictionaries(st.text(max_size=5), anything, max_size=4),
)
timeouts = st.one_of(st.none(), weird_floats, st.integers(-2, 600), st.text(max_size=3))
# What a client sends: a call envelope around the request, with its timeout.
calls = st.builds(
    lambda request, timeout, raw_id: {
        "k": "call",
        "id": raw_id,
        "request": request,
        "timeout_s": timeout,
    },
    st.one_of(well_typed, wrong_typed),
    timeouts,
    ids,
)
calls_with_sane_timeouts = st.builds(
    lambda request, raw_id: {"k": "call", "id": raw_id, "request": request},
    well_typed,
    ids,
)
requests = st.one_of(calls_with_sane_timeouts, calls, wrong_typed)


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory,
    model_path: str,
    tiny_reranker: str,
    tiny_embedder: str,
) -> Iterator[DaemonProcess]:
    root: Path = tmp_path_factory.mktemp("badinput")
    config = write_config(
        root / "w.toml",
        {
            "embed": {"model": tiny_embedder, "n_ctx": 128, **TIMING},
            "chat": {"model": model_path, "n_ctx": 128, **TIMING},
            "rerank": {"model": tiny_reranker, "n_ctx": 128, **TIMING},
        },
        log_dir=str(root / "logs"),
        max_frame_bytes=256 * 1024,
    )
    process = DaemonProcess(config)
    process.wait_ready()
    yield process
    assert process.stop() == 0


def exchange(daemon: DaemonProcess, payload: bytes) -> list[Any]:
    """Send one raw frame; the frames that come back until a final one or the close."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(str(daemon.socket))
    channel = SocketChannel(sock, codec.FROM_DAEMON)
    replies: list[Any] = []
    try:
        sock.sendall(struct.pack("!I", len(payload)) + payload)
        while True:
            try:
                frame = channel.recv()
            except (EOFError, ConnectionResetError):
                break
            replies.append(frame)
            if isinstance(frame, FINAL_REPLIES) and not isinstance(frame, ChatChunk):
                break
    finally:
        sock.close()
    return replies


HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check_typed_answer(daemon: DaemonProcess, request: dict[str, Any]) -> Any:
    """Send ``request``; its final reply, after checking that it is typed and that the
    daemon and every worker still serve (None: the request cannot be msgpack-encoded)."""
    try:
        payload = msgspec.msgpack.encode(request)
    except (OverflowError, TypeError):
        return None
    replies = exchange(daemon, payload)
    assert replies, f"no answer to {request!r}"
    final = replies[-1]
    if isinstance(final, ErrorFrame):
        assert final.kind in ("protocol", "invalid_request", "unavailable", "timeout"), final
    # The daemon and every worker are still there and still serve.
    assert daemon.proc.poll() is None
    assert daemon.wait_ready(timeout=30).status()
    return final


@HYPOTHESIS
@given(request=requests)
def test_hostile_frames_get_typed_answers_and_nothing_dies(
    daemon: DaemonProcess, request: dict[str, Any]
) -> None:
    check_typed_answer(daemon, request)


@HYPOTHESIS
@given(request=calls_with_sane_timeouts)
def test_well_typed_hostile_requests_never_get_a_protocol_error(
    daemon: DaemonProcess, request: dict[str, Any]
) -> None:
    """Well-typed frames are never the decoder's business: they get a result or the
    workers' own validation (InvalidRequest), never a ProtocolError."""
    final = check_typed_answer(daemon, request)
    if final is None:
        return
    OUTCOMES[type(final).__name__ + ":" + getattr(final, "kind", "")] += 1
    assert not (isinstance(final, ErrorFrame) and final.kind == "protocol"), (request, final)


def test_frame_over_the_cap_is_refused_before_it_is_read(daemon: DaemonProcess) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(daemon.socket))
    sock.sendall(struct.pack("!I", 10 * 1024 * 1024))  # announce 10 MiB, send none of it
    reply = SocketChannel(sock, codec.FROM_DAEMON).recv()
    assert isinstance(reply, ErrorFrame) and "over the 262144-byte cap" in reply.message
    sock.close()


def test_the_hostile_requests_reached_the_workers() -> None:
    """Guard against a generator that only ever trips the decoder (runs after the
    well-typed property test, whose outcomes it counts)."""
    answered = sum(OUTCOMES.values())
    print("well-typed outcomes:", dict(OUTCOMES))
    assert answered >= 20, OUTCOMES
    assert OUTCOMES["ErrorFrame:invalid_request"] >= 3, OUTCOMES
