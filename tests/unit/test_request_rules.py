"""One rule for empty text and generation ranges, whatever face a request comes through
(Python, CLI, socket, HTTP): ``limits.check_content`` refuses it before any worker, naming
the field (``param``). Issue 18 item 9. The drain's cut of a stream (item 8), pure asyncio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lilbee_workers.errors import InvalidRequest, WorkerUnavailable
from lilbee_workers.http.waiting import Drain, next_chunk
from lilbee_workers.limits import check_content
from lilbee_workers.transport.frames import (
    ChatRequest,
    CompleteRequest,
    EmbedRequest,
    Request,
    RerankRequest,
    VisionRequest,
)
from lilbee_workers.types import ChatMessage

USER = [ChatMessage(role="user", content="hi")]
EMPTY_USER = [ChatMessage(role="user", content="")]

REFUSED: list[tuple[Request, str]] = [
    (EmbedRequest(id=0, texts=[""]), "texts"),
    (EmbedRequest(id=0, texts=["bees", ""]), "texts"),
    (CompleteRequest(id=0, prompt=""), "prompt"),
    (ChatRequest(id=0, messages=[ChatMessage(role="user", content="")]), "messages"),
    (ChatRequest(id=0, messages=[]), "messages"),
    (RerankRequest(id=0, query="", documents=["a"]), "query"),
    (RerankRequest(id=0, query="q", documents=["a", ""]), "documents"),
    (RerankRequest(id=0, query="q", documents=["a"], top_n=0), "top_n"),
    (RerankRequest(id=0, query="q", documents=["a"], top_n=2**64 + 1), "top_n"),
    (CompleteRequest(id=0, prompt="x", stop=[""]), "stop"),
    (ChatRequest(id=0, messages=USER, stop=["\n", ""]), "stop"),
    (ChatRequest(id=0, messages=USER, max_tokens=0), "max_tokens"),
    (CompleteRequest(id=0, prompt="x", max_tokens=2**64 + 1), "max_tokens"),
    (CompleteRequest(id=0, prompt="x", seed=2**65), "seed"),
    (ChatRequest(id=0, messages=USER, seed=-1), "seed"),
    (VisionRequest(id=0, image=b"x", max_tokens=-3), "max_tokens"),
]


@pytest.mark.parametrize(("request_", "param"), REFUSED)
def test_empty_text_and_out_of_range_numbers_are_refused_naming_the_field(
    request_: Request, param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_content(request_)
    assert caught.value.param == param


ACCEPTED: list[Request] = [
    EmbedRequest(id=0, texts=[]),  # the Python API's embed([]) is an empty array
    EmbedRequest(id=0, texts=["bees"]),
    ChatRequest(id=0, messages=[ChatMessage(role="system", content="brief"), *EMPTY_USER]),
    CompleteRequest(id=0, prompt="x", max_tokens=2**31 - 1, seed=2**32 - 1, stop=["\n"]),
    RerankRequest(id=0, query="q", documents=[]),
    VisionRequest(id=0, image=b"x", prompt=""),  # no prompt: the role's default question
]


@pytest.mark.parametrize("request_", ACCEPTED)
def test_the_rest_passes(request_: Request) -> None:
    check_content(request_)


class _Endless(AsyncIterator[str]):
    """A stream whose next chunk takes ``pause`` seconds, forever."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.sent = 0

    async def __anext__(self) -> str:
        await asyncio.sleep(self.pause)
        self.sent += 1
        return "x"


def test_a_drain_deadline_cuts_a_stream_between_chunks_with_unavailable() -> None:
    async def run() -> tuple[list[str], Any]:
        drain = Drain()
        stream = _Endless(0.05)
        drain.start(asyncio.get_running_loop(), time.monotonic() + 0.3, 0.3)
        got: list[str] = []
        try:
            while (chunk := await next_chunk(stream, drain)) is not None:
                got.append(chunk)
        except WorkerUnavailable as exc:
            return got, exc
        return got, None

    got, error = asyncio.run(run())
    assert isinstance(error, WorkerUnavailable) and "drain_timeout_s (0.3 s)" in error.message
    assert got and set(got) == {"x"}  # chunks flowed until the deadline


def test_without_a_drain_a_stream_ends_at_its_end() -> None:
    class Three(_Endless):
        async def __anext__(self) -> str:
            if self.sent == 3:
                raise StopAsyncIteration
            return await super().__anext__()

    async def run() -> list[str]:
        stream, got = Three(0.0), []
        while (chunk := await next_chunk(stream, None)) is not None:
            got.append(chunk)
        return got

    assert asyncio.run(run()) == ["x", "x", "x"]
