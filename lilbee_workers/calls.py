"""One in-process call: what the caller waits on and the dispatcher answers."""

from __future__ import annotations

import queue
import threading
import time

from lilbee_workers.errors import Cancelled, WorkerError, WorkerTimeout, error_from_frame
from lilbee_workers.transport.frames import (
    AnyFrame,
    Cancel,
    ChatChunk,
    ErrorFrame,
    Request,
)
from lilbee_workers.transport.channel import PipeChannel

_END = object()


class Call:
    """A request queued on a role, and the replies coming back to its caller.

    The dispatcher delivers chunks and one final frame (or an error); the caller reads
    them with ``next_frame``. ``cancel`` may come from the caller's thread at any time:
    it reaches the worker at once through the health pipe.
    """

    def __init__(self, role: str, request: Request) -> None:
        self.role = role
        self.request = request
        self.enqueued_at = time.monotonic()
        self.chunks_delivered = 0
        self.cancel_requested = threading.Event()
        self._replies: queue.SimpleQueue[AnyFrame | WorkerError] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._bound: tuple[PipeChannel, int] | None = None
        self.finished = threading.Event()

    # ------------------------------------------------------------------ dispatcher side

    def bind(self, health: PipeChannel, attempt_id: int) -> None:
        """The call now runs on a worker as request ``attempt_id``."""
        with self._lock:
            self._bound = (health, attempt_id)
            cancelled = self.cancel_requested.is_set()
        if cancelled:
            self._send_cancel(health, attempt_id)

    def unbind(self) -> None:
        with self._lock:
            self._bound = None

    def deliver_chunk(self, frame: ChatChunk) -> None:
        self.chunks_delivered += 1
        self._replies.put(frame)

    def finish(self, frame: AnyFrame) -> None:
        self._replies.put(frame)
        self.finished.set()

    def fail(self, error: WorkerError) -> None:
        self._replies.put(error)
        self.finished.set()

    # ------------------------------------------------------------------ caller side

    def next_frame(self, timeout: float | None) -> AnyFrame:
        """The next chunk or the final frame; raises the call's error, or
        ``WorkerTimeout`` (after cancelling the call) when ``timeout`` runs out."""
        try:
            item = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.cancel()
            raise WorkerTimeout(
                f"{self.role} call did not finish within its timeout; cancelled", role=self.role
            ) from None
        if isinstance(item, WorkerError):
            raise item
        if isinstance(item, ErrorFrame):
            raise error_from_frame(item)
        return item

    def cancel(self) -> None:
        """Give up on the call: a queued call is skipped, a running one stops at the
        worker's next token."""
        with self._lock:
            if self.cancel_requested.is_set() or self.finished.is_set():
                self.cancel_requested.set()
                return
            self.cancel_requested.set()
            bound = self._bound
        if bound is not None:
            self._send_cancel(*bound)

    @staticmethod
    def _send_cancel(health: PipeChannel, attempt_id: int) -> None:
        try:
            health.send(Cancel(id=attempt_id))
        except (OSError, ValueError):
            pass  # the worker is gone; the dispatcher sees that on its own

    def cancelled_error(self) -> Cancelled:
        return Cancelled(f"{self.role} call was cancelled", role=self.role)
