"""Waiting on a worker while watching the HTTP client and the daemon's drain: a client
that leaves before its answer (or, streaming, before the first chunk) cancels its call,
queued or running; a call still running when the drain deadline passes is cut with
``WorkerUnavailable`` (a 503, or mid-stream an error event), never dropped mid-answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request

from lilbee_workers.api import CallHandle, WorkerAPI
from lilbee_workers.errors import WorkerUnavailable
from lilbee_workers.http.errors import HttpError
from lilbee_workers.transport.frames import AnyFrame
from lilbee_workers.transport.frames import Request as WorkerRequest

T = TypeVar("T")
POLL_S = 0.2
"""How often a waiting request checks whether its client is still connected."""


class Drain:
    """The daemon's shutdown as the HTTP face sees it. ``start`` (from any thread) sets
    the deadline; past it, ``cut`` is done and every wait below ends with ``error()``.
    Until then calls run on: SIGTERM drains HTTP calls as it drains socket calls."""

    def __init__(self) -> None:
        self._cut: asyncio.Future[None] | None = None
        self.timeout_s = 0.0

    def cut(self) -> asyncio.Future[None]:
        """Done once the deadline has passed (created on the serving loop's first ask)."""
        if self._cut is None:
            self._cut = asyncio.get_running_loop().create_future()
        return self._cut

    def start(self, loop: asyncio.AbstractEventLoop, deadline: float, timeout_s: float) -> None:
        """Cut what still runs at ``deadline`` (``time.monotonic``); thread-safe."""
        self.timeout_s = timeout_s

        def schedule() -> None:
            loop.call_later(max(0.0, deadline - time.monotonic()), self._fire)

        loop.call_soon_threadsafe(schedule)

    def _fire(self) -> None:
        if not self.cut().done():
            self.cut().set_result(None)

    def error(self) -> WorkerUnavailable:
        return WorkerUnavailable(
            f"the daemon is shutting down and the call did not finish within its "
            f"drain_timeout_s ({self.timeout_s:g} s); it was cut"
        )


async def next_chunk(stream: AsyncIterator[str], drain: Drain | None) -> str | None:
    """The stream's next chunk, None at its end; ``drain.error()`` once the drain
    deadline passes (the caller closes the stream, which cancels the call)."""
    task = asyncio.ensure_future(stream.__anext__())
    try:
        if drain is not None:
            both: set[asyncio.Future[Any]] = {task, drain.cut()}
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                raise drain.error()
        return await task
    except StopAsyncIteration:
        return None
    finally:
        if not task.done():
            task.add_done_callback(_retrieve)


class ClientGone(HttpError):
    """The client disconnected before its answer; its call was cancelled."""

    def __init__(self) -> None:
        super().__init__(499, "the client disconnected; the call was cancelled", "cancelled")


async def unless_gone(
    request: Request,
    waiting: Awaitable[T],
    cancel: Callable[[], Awaitable[None]],
    drain: Drain | None = None,
) -> T:
    """What ``waiting`` gives, unless the client disconnects first (``ClientGone``) or
    the drain deadline passes (``drain.error()``): then ``cancel()`` the call (the wait
    goes on in its thread until the call answers its cancellation)."""
    task = asyncio.ensure_future(waiting)
    watched: set[asyncio.Future[Any]] = {task} if drain is None else {task, drain.cut()}
    try:
        while True:
            done, _ = await asyncio.wait(
                watched, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                return task.result()
            if drain is not None and drain.cut().done():
                raise drain.error()
            if await request.is_disconnected():
                raise ClientGone()
    except BaseException:
        if not task.done():
            task.add_done_callback(_retrieve)
            await cancel()
        raise


async def final_frame(
    api: WorkerAPI, request: Request, role: str, frame: WorkerRequest, drain: Drain | None = None
) -> AnyFrame:
    """Send ``frame`` to ``role`` and wait for its final frame, cancelling the call if
    the client leaves first (a queued call is dropped, a running one stopped)."""
    handle: CallHandle = await asyncio.to_thread(api._open, role, frame, None)

    async def cancel() -> None:
        handle.cancel()

    return await unless_gone(request, asyncio.to_thread(handle.next_frame, None), cancel, drain)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Read a given-up wait's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
