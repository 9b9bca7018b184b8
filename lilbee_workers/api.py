"""The public calling API, shared by the in-process ``Supervisor`` and the socket
``Client``: each only says how a request reaches a role (``_open``)."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from lilbee_workers.errors import InvalidRequest, ProtocolError
from lilbee_workers.transport.frames import (
    AnyFrame,
    ChatChunk,
    ChatRequest,
    ChatResult,
    CompleteRequest,
    EmbedRequest,
    EmbedResult,
    Request,
    RerankRequest,
    RerankResult,
    VisionRequest,
)
from lilbee_workers.types import ChatMessage, RerankItem, RoleStatus

MessagesLike = str | Sequence[ChatMessage | Mapping[str, str]]


class CallHandle(Protocol):
    """A request on its way: frames come back through ``next_frame``."""

    def next_frame(self, timeout: float | None) -> AnyFrame: ...

    def cancel(self) -> None: ...


class ChatStream(Iterator[str]):
    """Text chunks of a chat or vision reply, as they are generated.

    After the last chunk, ``result`` holds the whole reply with its finish reason and
    token counts. Closing the stream early (``close()``, leaving a ``with`` block, or
    dropping it) cancels generation in the worker, which stays warm.
    """

    def __init__(self, call: CallHandle, timeout: float | None) -> None:
        self._call = call
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self.result: ChatResult | None = None
        self._closed = False

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        remaining = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        try:
            frame = self._call.next_frame(remaining)
        except BaseException:
            self._closed = True
            raise
        if isinstance(frame, ChatChunk):
            return frame.text
        if isinstance(frame, ChatResult):
            self.result = frame
            self._closed = True
            raise StopIteration
        self._closed = True
        raise ProtocolError(f"unexpected {type(frame).__name__} frame in a chat stream")

    def collect(self) -> ChatResult:
        """Read the rest of the stream; the whole reply."""
        for _ in self:
            pass
        if self.result is None:
            raise ProtocolError("stream ended without a result")
        return self.result

    def text(self) -> str:
        return self.collect().text

    def close(self) -> None:
        """Stop reading; cancels the generation if it is still running."""
        if not self._closed:
            self._closed = True
            self._call.cancel()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class WorkerAPI(ABC):
    """embed, chat, rerank, vision, status, restart: one surface, two transports."""

    @abstractmethod
    def _open(self, role: str, request: Request, timeout: float | None) -> CallHandle:
        """Send ``request`` to ``role``; return the handle its replies arrive on."""

    @abstractmethod
    def status(self) -> list[RoleStatus]:
        """Every role's state and counters."""

    @abstractmethod
    def restart(self, role: str = "all", wait: bool = True) -> list[RoleStatus]:
        """Gracefully restart a role (or ``all``): drain, stop, start."""

    @abstractmethod
    def load(self, role: str, model: str) -> list[RoleStatus]:
        """Make ``model`` (a name from the role's models) the role's default and load it
        now, after the call in flight; ``ModelError`` if it cannot load (the model that
        served before serves on)."""

    @abstractmethod
    def unload(self, role: str) -> list[RoleStatus]:
        """Stop the role's worker to free its memory; the next call loads it again."""

    @abstractmethod
    def close(self) -> None:
        """Release what this object holds (workers, or connections to the daemon)."""

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _final(self, role: str, request: Request, timeout: float | None) -> AnyFrame:
        return self._open(role, request, timeout).next_frame(timeout)

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = True,
        truncate: bool = False,
        model: str | None = None,
        timeout: float | None = None,
    ) -> npt.NDArray[np.float32]:
        """Embed texts; an array of shape (len(texts), dim), float32."""
        request = EmbedRequest(
            id=0,
            model=_model(model),
            texts=_strings(texts, "texts"),
            normalize=bool(normalize),
            truncate=bool(truncate),
        )
        frame = self._final("embed", request, timeout)
        if not isinstance(frame, EmbedResult):
            raise ProtocolError(f"expected an embed result, got {type(frame).__name__}")
        return vectors_of(frame)

    def chat(
        self,
        messages: MessagesLike,
        *,
        max_tokens: int | None = None,
        temperature: float = 0.8,
        top_p: float = 0.95,
        stop: Sequence[str] = (),
        seed: int | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> ChatStream:
        """Stream a chat reply: iterate for text chunks, then read ``.result``."""
        request = ChatRequest(
            id=0,
            model=_model(model),
            messages=chat_messages(messages),
            max_tokens=_optional_int(max_tokens, "max_tokens"),
            temperature=_number(temperature, "temperature"),
            top_p=_number(top_p, "top_p"),
            stop=_strings(stop, "stop"),
            seed=_optional_int(seed, "seed"),
        )
        return ChatStream(self._open("chat", request, timeout), timeout)

    def complete(
        self,
        prompt: str,
        *,
        max_tokens: int | None = None,
        temperature: float = 0.8,
        top_p: float = 0.95,
        stop: Sequence[str] = (),
        seed: int | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> ChatStream:
        """Stream the continuation of a raw prompt (no chat template), served by the
        chat role: what a base model such as the bundled gemma 3 270M is good at."""
        if not isinstance(prompt, str):
            raise InvalidRequest(f"prompt must be a string, got {type(prompt).__name__}")
        request = CompleteRequest(
            id=0,
            model=_model(model),
            prompt=prompt,
            max_tokens=_optional_int(max_tokens, "max_tokens"),
            temperature=_number(temperature, "temperature"),
            top_p=_number(top_p, "top_p"),
            stop=_strings(stop, "stop"),
            seed=_optional_int(seed, "seed"),
        )
        return ChatStream(self._open("chat", request, timeout), timeout)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        return_documents: bool = False,
        truncate: bool = False,
        model: str | None = None,
        timeout: float | None = None,
    ) -> list[RerankItem]:
        """Score documents against a query; highest score first."""
        if not isinstance(query, str):
            raise InvalidRequest(f"query must be a string, got {type(query).__name__}")
        request = RerankRequest(
            id=0,
            model=_model(model),
            query=query,
            documents=_strings(documents, "documents"),
            top_n=_optional_int(top_n, "top_n"),
            return_documents=bool(return_documents),
            truncate=bool(truncate),
        )
        frame = self._final("rerank", request, timeout)
        if not isinstance(frame, RerankResult):
            raise ProtocolError(f"expected a rerank result, got {type(frame).__name__}")
        return frame.results

    def vision(
        self,
        image: bytes,
        prompt: str | None = None,
        *,
        max_tokens: int | None = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> ChatStream:
        """Describe an image (PNG or JPEG bytes); streams like ``chat``."""
        if not isinstance(image, (bytes, bytearray, memoryview)):
            raise InvalidRequest(f"image must be bytes, got {type(image).__name__}")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidRequest(f"prompt must be a string, got {type(prompt).__name__}")
        request = VisionRequest(
            id=0,
            model=_model(model),
            image=bytes(image),
            prompt=prompt,
            max_tokens=_optional_int(max_tokens, "max_tokens"),
            temperature=_number(temperature, "temperature"),
            seed=_optional_int(seed, "seed"),
        )
        return ChatStream(self._open("vision", request, timeout), timeout)


def vectors_of(frame: EmbedResult) -> npt.NDArray[np.float32]:
    """The (count, dim) float32 array an ``EmbedResult`` carries."""
    expected = frame.count * frame.dim * 4
    if len(frame.vectors) != expected:
        raise ProtocolError(
            f"embed result has {len(frame.vectors)} bytes, expected {expected} "
            f"({frame.count} x {frame.dim} float32)"
        )
    return np.frombuffer(frame.vectors, dtype="<f4").reshape(frame.count, frame.dim)


def chat_messages(messages: MessagesLike) -> list[ChatMessage]:
    """Accept a prompt string, ``ChatMessage``s or ``{"role", "content"}`` mappings."""
    if isinstance(messages, str):
        return [ChatMessage(role="user", content=messages)]
    if not isinstance(messages, Iterable):
        raise InvalidRequest("messages must be a string or a list of messages")
    result: list[ChatMessage] = []
    for index, message in enumerate(messages):
        if isinstance(message, ChatMessage):
            result.append(message)
            continue
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"messages[{index}] must be a mapping with role and content")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise InvalidRequest(f"messages[{index}] needs string 'role' and 'content'")
        result.append(ChatMessage(role=role, content=content))
    return result


def _strings(values: Any, name: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidRequest(f"{name} must be a list of strings")
    result = list(values)
    for index, value in enumerate(result):
        if not isinstance(value, str):
            raise InvalidRequest(f"{name}[{index}] must be a string, got {type(value).__name__}")
    return result


def _model(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"model must be a model name, got {type(value).__name__}")
    return value


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer, got {type(value).__name__}")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidRequest(f"{name} must be finite, got {value}")
    return float(value)
