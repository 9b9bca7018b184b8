"""One in-process call: what the caller waits on and the dispatcher answers."""

from __future__ import annotations

import queue
import time
from typing import Protocol

import msgspec

from lilbee_workers.errors import Cancelled, WorkerError, WorkerTimeout
from lilbee_workers.transport.channel import PipeChannel
from lilbee_workers.transport.error_frames import from_frame
from lilbee_workers.transport.frames import (
    AnyFrame,
    Cancel,
    ChatChunk,
    ErrorFrame,
    HealthReport,
    Request,
)


class Attempted(Protocol):
    """What one attempt on a worker needs from the call it runs: a ``Call``, or a
    ``batch.MergedCall`` of several coalesced ones."""

    role: str
    request: Request
    expires_at: float | None
    chunks_delivered: int
    retried: bool

    @property
    def cancelled(self) -> bool: ...

    @property
    def finished(self) -> bool: ...

    def bind(self, health: PipeChannel[HealthReport], attempt_id: int) -> None: ...

    def unbind(self) -> None: ...

    def send_cancel(self) -> None: ...

    def deliver_chunk(self, frame: ChatChunk) -> None: ...

    def finish(self, frame: AnyFrame) -> None: ...

    def fail(self, error: WorkerError) -> None: ...

    def time_out(self) -> None: ...

    def cancelled_error(self) -> Cancelled: ...

    def settle_if_abandoned(self) -> bool: ...


class Call:
    """A request queued on a role, and the replies coming back to its caller.

    The dispatcher delivers chunks and one final frame (or an error); the caller reads
    them with ``next_frame``. ``cancel`` may come from the caller's thread at any time:
    it reaches the worker at once through the health pipe.
    """

    def __init__(self, role: str, request: Request, timeout: float | None = None) -> None:
        self.role = role
        self.request = request
        self.enqueued_at = time.monotonic()
        self.expires_at = None if timeout is None else self.enqueued_at + timeout
        self.timed_out = False
        self.chunks_delivered = 0
        self.tokens_so_far = 0  # completion tokens, as the worker counts them in chunks
        self.ran_in_slots = False  # beside other calls on a batching worker
        self.retried = False
        self.lost_from_outside = False  # a loss not of its own doing: never quarantined
        self.cancelled = False
        self.finished = False
        self._replies: queue.SimpleQueue[AnyFrame | WorkerError] = queue.SimpleQueue()
        # Plain attributes, no locks: under the GIL each assignment is atomic, and
        # bind/cancel each check the other's flag after setting their own.
        self._bound: tuple[PipeChannel[HealthReport], int] | None = None

    # ------------------------------------------------------------------ dispatcher side

    def bind(self, health: PipeChannel[HealthReport], attempt_id: int) -> None:
        """The call now runs on a worker as request ``attempt_id``."""
        self._bound = (health, attempt_id)
        if self.cancelled:
            self._send_cancel(health, attempt_id)

    def unbind(self) -> None:
        self._bound = None

    def deliver_chunk(self, frame: ChatChunk) -> None:
        self.chunks_delivered += 1
        self.tokens_so_far = frame.tokens or self.chunks_delivered
        self._replies.put(self._as_answer(frame))

    def finish(self, frame: AnyFrame) -> None:
        if self.finished:
            return  # answered already (e.g. failed while its worker wound down)
        self._replies.put(self._timeout_error() if self.timed_out else self._as_answer(frame))
        self.finished = True

    def _as_answer(self, frame: AnyFrame) -> AnyFrame:
        """The frame under the caller's request id (on the pipe it carried the attempt's
        id): ids are swapped here and in ``attempt``, nowhere else."""
        if getattr(frame, "id", self.request.id) != self.request.id:
            return msgspec.structs.replace(frame, id=self.request.id)
        return frame

    def time_out(self) -> None:
        """The caller's timeout ran out while the call ran: cancel it; its answer will
        be ``WorkerTimeout``."""
        if not self.timed_out:
            self.timed_out = True
            self.cancel()

    def _timeout_error(self) -> WorkerTimeout:
        return WorkerTimeout(
            f"{self.role} call did not finish within its timeout; cancelled", role=self.role
        )

    def fail(self, error: WorkerError) -> None:
        if self.finished:
            return
        self._replies.put(error)
        self.finished = True

    # ------------------------------------------------------------------ caller side

    def next_frame(self, timeout: float | None) -> AnyFrame:
        """The next chunk or the final frame; raises the call's error, or
        ``WorkerTimeout`` (after cancelling the call) when ``timeout`` runs out."""
        frame = self.wait_frame(timeout)
        if frame is None:
            self.cancel()
            raise self._timeout_error()
        return frame

    def wait_frame(self, timeout: float | None) -> AnyFrame | None:
        """Like ``next_frame``, but None when ``timeout`` runs out (the call goes on)."""
        try:
            item = self._replies.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, WorkerError):
            raise item
        if isinstance(item, ErrorFrame):
            raise from_frame(item)
        return item

    def send_cancel(self) -> None:
        """Tell the worker running this call to stop (again, if it was told already)."""
        bound = self._bound
        if bound is not None:
            self._send_cancel(*bound)

    def cancel(self) -> None:
        """Give up on the call: a queued call is skipped, a running one stops at the
        worker's next token."""
        already = self.cancelled or self.finished
        self.cancelled = True
        bound = self._bound
        if bound is not None and not already:
            self._send_cancel(*bound)

    @staticmethod
    def _send_cancel(health: PipeChannel[HealthReport], attempt_id: int) -> None:
        try:
            health.send(Cancel(id=attempt_id))
        except (OSError, ValueError):
            pass  # the worker is gone; the dispatcher sees that on its own

    def cancelled_error(self) -> Cancelled:
        return Cancelled(f"{self.role} call was cancelled", role=self.role)

    def settle_if_abandoned(self) -> bool:
        """Answer the call if its caller gave up, or its deadline passed while it
        waited (``WorkerTimeout``): it never reaches a worker. True if so."""
        if self.expires_at is not None and time.monotonic() >= self.expires_at:
            self.timed_out = self.cancelled = True
            self.fail(self._timeout_error())
            return True
        if self.cancelled:
            self.fail(self.cancelled_error())
        return self.cancelled
