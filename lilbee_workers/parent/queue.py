"""One role's waiting line and the role lock: which call or lifecycle step runs next.

A role runs one thing at a time: a call on its worker, or lifecycle work (start,
restart, stop), so no call ever runs on a worker that is being replaced. Callers and the
dispatcher thread meet here, under one condition variable.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import Overloaded, WorkerError, WorkerUnavailable
from lilbee_workers.parent.calls import Call
from lilbee_workers.parent.handle import WorkerHandle


@dataclass
class Restart:
    """Graceful restart, optionally with a new config."""

    config: RoleConfig | None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Respawn:
    """A call holding the role needs a fresh worker: its own died, or (``model``) it
    wants another model. Served at once: its caller already holds the role."""

    model: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    error: WorkerError | None = None


@dataclass
class Load:
    """Make ``model`` the role's default and load it now."""

    model: str
    done: threading.Event = field(default_factory=threading.Event)
    error: WorkerError | None = None


@dataclass
class Unload:
    """Stop the role's worker to free its memory."""

    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Recover:
    """Calls lost with this worker were taken over by another replica: bring a fresh
    worker up before any call needs it, once those calls are done (a model load would
    take CPU from them), or after ``patience_s``."""

    calls: list[Call]
    patience_s: float = 3.0
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, closing: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.patience_s
        while not all(call.finished for call in self.calls) and not closing():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)


class Close:
    """Stop the role."""


@dataclass
class WorkerExited:
    """A worker's process ended (seen by its health monitor)."""

    worker: WorkerHandle


Control = Restart | Respawn | Load | Unload | Recover | Close | WorkerExited


def refuse(control: Control, role: str) -> None:
    """Release whoever waits on ``control``: the role is shutting down. A load or a
    respawn gets the reason, so that nobody reads a refused switch as done."""
    if isinstance(control, (Load, Respawn)):
        control.error = WorkerUnavailable(f"{role} is shutting down", role=role)
    if isinstance(control, Respawn):
        control.ok = False
    if not isinstance(control, (Close, WorkerExited)):
        control.done.set()


GROUP_PATIENCE_S = 2.0
"""How long the oldest call may wait while calls for the loaded model go first."""

_LIFECYCLE = object()


class RoleQueue:
    """Bounded queue of calls, pending controls, and who holds the role."""

    def __init__(self, role: str, size: int) -> None:
        self.role = role
        self.size = size
        self.cond = threading.Condition()
        self.closing = False
        self.retiring = False
        """A replica being retired: it takes no new call (they go to the others) but
        finishes, and may still retry on another replica, the call it runs."""
        self._calls: deque[Call] = deque()
        self._controls: deque[Control] = deque()
        # What holds the role: the call running on the worker, or _LIFECYCLE. Held from
        # the start so that no call runs before the first worker is up.
        self._holder: object | None = _LIFECYCLE
        self._room_waiters = 0  # callers waiting for room in a full queue
        self._running = 0  # calls in slots beyond the holder (a batching worker)
        self._wake_fd = -1  # a slot run's eventfd: told of every new call and control
        self.prefer: Callable[[Call], bool] = lambda call: True
        """Calls the worker serves without a model switch: they go first, for up to
        ``GROUP_PATIENCE_S`` of the oldest call's wait (set by the dispatcher)."""

    # ------------------------------------------------------------------ callers

    def enqueue(
        self,
        call: Call,
        block_s: float,
        refuse: Callable[[], WorkerError | None],
        hold_if_idle: bool = False,
    ) -> bool:
        """Admit ``call`` (``Overloaded`` when full after ``block_s``; ``refuse()``'s
        error, e.g. a failed role). With ``hold_if_idle``, an idle role is taken for the
        caller to run the call itself: True then, else the call waits in line."""
        with self.cond:
            self._admit(block_s, refuse)
            if hold_if_idle and self._holder is None and not self._calls and not self._controls:
                self._holder = call
                return True
            self._calls.append(call)
            self.cond.notify_all()
            self._wake()
            return False

    def take_over(self, call: Call) -> bool:
        """Put a call lost on another replica at the head of the line, past the size
        bound (it was admitted once); False if this role is closing or retiring."""
        with self.cond:
            if self.closing or self.retiring:
                return False
            self._calls.appendleft(call)
            self.cond.notify_all()
            self._wake()
            return True

    def _admit(self, block_s: float, refuse: Callable[[], WorkerError | None]) -> None:
        deadline = time.monotonic() + block_s
        while True:
            if self.closing or self.retiring:
                raise WorkerUnavailable(f"{self.role} is shutting down", role=self.role)
            error = refuse()
            if error is not None:
                raise error
            if len(self._calls) < self.size:
                return
            if self._drop_cancelled():
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Overloaded(
                    f"{self.role} queue is full ({self.size} calls waiting)", role=self.role
                )
            self._room_waiters += 1
            try:
                self.cond.wait(remaining)
            finally:
                self._room_waiters -= 1

    def _drop_cancelled(self) -> bool:
        """Answer and remove queued calls whose callers gave up (so they no longer take
        queue room). True if any were removed."""
        cancelled = [call for call in self._calls if call.cancelled]
        for call in cancelled:
            self._calls.remove(call)
            call.fail(call.cancelled_error())
        return bool(cancelled)

    def post(self, control: Control) -> None:
        """Queue lifecycle work; once the role is closing, answer it at once instead
        (nothing would run it): its waiter is released, a load gets the reason."""
        with self.cond:
            if self.closing and not isinstance(control, (Close, WorkerExited)):
                refuse(control, self.role)
                return
            self._controls.append(control)
            self.cond.notify_all()
            self._wake()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
            self._wake()

    def retire(self) -> None:
        """Take no more calls (``retiring``); the caller moves the queued ones."""
        with self.cond:
            self.retiring = True
            self.cond.notify_all()

    def counts(self) -> tuple[int, int]:
        """(calls queued by live callers, calls running: 0 or 1, or a batching
        worker's calls in its slots)."""
        with self.cond:
            queued = sum(not call.cancelled for call in self._calls)
            holding = 0 if self._holder in (None, _LIFECYCLE) else 1
            return queued, max(holding, self._running)

    # ------------------------------------------------------------------ dispatcher thread

    def next_item(self, timeout: float | None = None) -> Control | Call | None:
        """The next control (a respawn at once, others once nothing holds the role),
        else the next queued call, which then holds the role; None after ``timeout``
        seconds with nothing to do."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                for control in self._controls:
                    if isinstance(control, Respawn):  # its caller holds the role
                        self._controls.remove(control)
                        return control
                if self._controls and self._holder is None:
                    control = self._controls.popleft()
                    if not isinstance(control, Close):
                        self._holder = _LIFECYCLE
                    return control
                if self._calls and self._holder is None and not self._controls:
                    call = self._pick()
                    self._holder = call
                    if self._room_waiters:
                        self.cond.notify_all()  # room in the queue
                    return call
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self.cond.wait(remaining)

    def hold_if_idle(self) -> bool:
        """Take the role for lifecycle work if nothing holds it and nothing waits."""
        with self.cond:
            if self._holder is None and not self._calls and not self._controls:
                self._holder = _LIFECYCLE
                return True
            return False

    def _pick(self) -> Call:
        """The oldest call, unless it needs a model switch, has waited less than
        ``GROUP_PATIENCE_S``, and a later call can use the loaded model."""
        oldest = self._calls[0]
        if not self.prefer(oldest) and time.monotonic() - oldest.enqueued_at < GROUP_PATIENCE_S:
            for call in self._calls:
                if self.prefer(call):
                    self._calls.remove(call)
                    return call
        return self._calls.popleft()

    # ------------------------------------------------------------------ slots

    def listen(self, wake_fd: int) -> None:
        """A slot run on this role wants to hear of every new call or control (-1: none)."""
        with self.cond:
            self._wake_fd = wake_fd

    def _wake(self) -> None:
        if self._wake_fd >= 0:
            os.eventfd_write(self._wake_fd, 1)

    def take_for_slots(self, free: int, running: int) -> list[Call]:
        """Up to ``free`` queued calls for slots beside ``running`` others, in order:
        none while a control waits (a restart drains the slots) or the role closes; a
        call that needs another model keeps its place; a retried call stops the
        taking (it runs alone, once the slots drain)."""
        taken: list[Call] = []
        with self.cond:
            if not (self._controls or self.closing or self.retiring):
                for call in list(self._calls):
                    if len(taken) >= free or call.retried:
                        break
                    if self.prefer(call):
                        self._calls.remove(call)
                        taken.append(call)
            self._running = running + len(taken)
            if taken and self._room_waiters:
                self.cond.notify_all()
        return taken

    def release(self) -> None:
        """Free the role for the next call or control."""
        with self.cond:
            self._holder = None
            self._running = 0
            if self._calls or self._controls or self._room_waiters:
                self.cond.notify_all()

    def take_more(
        self, fits: Callable[[Call], bool], size_of: Callable[[Call], int], room: int
    ) -> list[Call]:
        """Take queued calls that ``fits`` accepts, in order, while their sizes add up to
        at most ``room`` (coalescing); the others keep their places."""
        taken: list[Call] = []
        with self.cond:
            for call in list(self._calls):
                if fits(call) and size_of(call) <= room:
                    self._calls.remove(call)
                    taken.append(call)
                    room -= size_of(call)
            if taken and self._room_waiters:
                self.cond.notify_all()
        return taken

    def wait_for_calls(self, seconds: float) -> None:
        """Wait up to ``seconds`` for another call to queue (or for close)."""
        with self.cond:
            before = len(self._calls)
            self.cond.wait_for(lambda: len(self._calls) > before or self.closing, seconds)

    def take_calls(self) -> list[Call]:
        """Empty the line (the role failed or is closing); the caller answers them."""
        with self.cond:
            calls = list(self._calls)
            self._calls.clear()
            self.cond.notify_all()
            return calls

    def refuse_controls(self) -> None:
        """Answer every control still waiting (the role is shutting down)."""
        with self.cond:
            controls = list(self._controls)
            self._controls.clear()
        for control in controls:
            refuse(control, self.role)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, but wake at once for close."""
        if seconds > 0:
            with self.cond:
                self.cond.wait_for(lambda: self.closing, timeout=seconds)
