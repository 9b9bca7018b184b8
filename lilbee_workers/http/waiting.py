"""Waiting on a worker while watching the HTTP client: a client that leaves before its
answer (or, streaming, before the first chunk) cancels its call, queued or running."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request

from lilbee_workers.api import CallHandle, WorkerAPI
from lilbee_workers.http.errors import HttpError
from lilbee_workers.transport.frames import AnyFrame
from lilbee_workers.transport.frames import Request as WorkerRequest

T = TypeVar("T")
POLL_S = 0.2
"""How often a waiting request checks whether its client is still connected."""


class ClientGone(HttpError):
    """The client disconnected before its answer; its call was cancelled."""

    def __init__(self) -> None:
        super().__init__(499, "the client disconnected; the call was cancelled", "cancelled")


async def unless_gone(
    request: Request, waiting: Awaitable[T], cancel: Callable[[], Awaitable[None]]
) -> T:
    """What ``waiting`` gives, unless the client disconnects first: then ``cancel()``
    the call and raise ``ClientGone`` (the wait goes on in its thread until the call
    answers its cancellation)."""
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    except BaseException:
        if not task.done():
            task.add_done_callback(_retrieve)
            await cancel()
        raise


async def final_frame(
    api: WorkerAPI, request: Request, role: str, frame: WorkerRequest
) -> AnyFrame:
    """Send ``frame`` to ``role`` and wait for its final frame, cancelling the call if
    the client leaves first (a queued call is dropped, a running one stopped)."""
    handle: CallHandle = await asyncio.to_thread(api._open, role, frame, None)

    async def cancel() -> None:
        handle.cancel()

    return await unless_gone(request, asyncio.to_thread(handle.next_frame, None), cancel)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Read a given-up wait's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
