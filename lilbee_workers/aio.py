"""The asyncio face of any ``WorkerAPI``: blocking waits run in threads, so the event
loop never blocks on a worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import TracebackType

import numpy as np
import numpy.typing as npt

from lilbee_workers.api import ChatStream, MessagesLike, WorkerAPI
from lilbee_workers.config import SupervisorConfig
from lilbee_workers.supervisor import Supervisor
from lilbee_workers.transport.frames import ChatResult
from lilbee_workers.types import RerankItem, RoleStatus

_END = object()


class AsyncChatStream(AsyncIterator[str]):
    """``async for`` over a chat or vision stream; ``aclose()`` cancels generation."""

    def __init__(self, stream: ChatStream) -> None:
        self._stream = stream

    @property
    def result(self) -> ChatResult | None:
        return self._stream.result

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> str:
        chunk = await asyncio.to_thread(next, self._stream, _END)
        if chunk is _END:
            raise StopAsyncIteration
        assert isinstance(chunk, str)
        return chunk

    async def collect(self) -> ChatResult:
        return await asyncio.to_thread(self._stream.collect)

    async def aclose(self) -> None:
        self._stream.close()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stream.close()


class AsyncWorkerAPI:
    """Async versions of ``embed``, ``chat``, ``rerank``, ``vision``, ``status``, ``restart``."""

    def __init__(self, sync: WorkerAPI) -> None:
        self.sync = sync

    async def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = True,
        truncate: bool = False,
        model: str | None = None,
        timeout: float | None = None,
    ) -> npt.NDArray[np.float32]:
        """Embed texts; an array of shape (len(texts), dim), float32."""
        return await asyncio.to_thread(
            self.sync.embed,
            texts,
            normalize=normalize,
            truncate=truncate,
            model=model,
            timeout=timeout,
        )

    async def chat(
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
    ) -> AsyncChatStream:
        """Stream a chat reply: ``async for`` its chunks, then read ``.result``."""
        stream = await asyncio.to_thread(
            self.sync.chat,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
            model=model,
            timeout=timeout,
        )
        return AsyncChatStream(stream)

    async def complete(
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
    ) -> AsyncChatStream:
        """Stream the continuation of a raw prompt (chat role, no template)."""
        stream = await asyncio.to_thread(
            self.sync.complete,
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
            model=model,
            timeout=timeout,
        )
        return AsyncChatStream(stream)

    async def rerank(
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
        return await asyncio.to_thread(
            self.sync.rerank,
            query,
            documents,
            top_n=top_n,
            return_documents=return_documents,
            truncate=truncate,
            model=model,
            timeout=timeout,
        )

    async def vision(
        self,
        image: bytes,
        prompt: str | None = None,
        *,
        max_tokens: int | None = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> AsyncChatStream:
        """Describe an image (PNG or JPEG bytes); streams like ``chat``."""
        stream = await asyncio.to_thread(
            self.sync.vision,
            image,
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            model=model,
            timeout=timeout,
        )
        return AsyncChatStream(stream)

    async def status(self) -> list[RoleStatus]:
        return await asyncio.to_thread(self.sync.status)

    async def restart(self, role: str = "all", wait: bool = True) -> list[RoleStatus]:
        return await asyncio.to_thread(self.sync.restart, role, wait)

    async def load(self, role: str, model: str) -> list[RoleStatus]:
        return await asyncio.to_thread(self.sync.load, role, model)

    async def unload(self, role: str) -> list[RoleStatus]:
        return await asyncio.to_thread(self.sync.unload, role)


class AsyncSupervisor(AsyncWorkerAPI):
    """``async with AsyncSupervisor(config) as sup: vectors = await sup.embed([...])``"""

    sync: Supervisor

    def __init__(
        self, config: SupervisorConfig | str | None = None, *, queue_wait_s: float = 0.0
    ) -> None:
        super().__init__(Supervisor(config, queue_wait_s=queue_wait_s))

    async def start(self) -> AsyncSupervisor:
        await asyncio.to_thread(self.sync.start)
        return self

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncSupervisor:
        return await self.start()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
