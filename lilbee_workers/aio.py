"""The asyncio face of any ``WorkerAPI``: blocking waits run in threads, so the event
loop never blocks on a worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from lilbee_workers.api import ChatStream, MessagesLike, WorkerAPI
from lilbee_workers.config import SupervisorConfig
from lilbee_workers.supervisor import Supervisor
from lilbee_workers.transport.frames import ChatResult, RerankItem, RoleStatus

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

    async def embed(self, texts: Sequence[str], **options: Any) -> npt.NDArray[np.float32]:
        return await asyncio.to_thread(self.sync.embed, texts, **options)

    async def chat(self, messages: MessagesLike, **options: Any) -> AsyncChatStream:
        return AsyncChatStream(await asyncio.to_thread(self.sync.chat, messages, **options))

    async def rerank(
        self, query: str, documents: Sequence[str], **options: Any
    ) -> list[RerankItem]:
        return await asyncio.to_thread(self.sync.rerank, query, documents, **options)

    async def vision(
        self, image: bytes, prompt: str | None = None, **options: Any
    ) -> AsyncChatStream:
        stream = await asyncio.to_thread(self.sync.vision, image, prompt, **options)
        return AsyncChatStream(stream)

    async def status(self) -> list[RoleStatus]:
        return await asyncio.to_thread(self.sync.status)

    async def restart(self, role: str = "all", wait: bool = True) -> list[RoleStatus]:
        return await asyncio.to_thread(self.sync.restart, role, wait)


class AsyncSupervisor(AsyncWorkerAPI):
    """``async with AsyncSupervisor(config) as sup: vectors = await sup.embed([...])``"""

    sync: Supervisor

    def __init__(self, config: SupervisorConfig | str | None = None, **options: Any) -> None:
        super().__init__(Supervisor(config, **options))

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
