"""Several calls at once on one worker (a chat worker that batches its streams,
``parallel`` > 1): each call is sent under its own attempt id on the one data pipe, and
the frames that come back are routed to their calls by that id.

Each call keeps its own deadline (``timeout=``), its own cancel (sent for its own id on
the health pipe; the worker stops that stream alone) and its own ``kill_after_s``. What
ends the worker ends every call on it: ``pump`` then returns the ``Lost`` and the
dispatcher applies the rules of ``merging`` to each call (retry alone, or give up).

Only the dispatcher thread uses a ``SlotRun``; callers reach a running call through the
``Call`` itself (cancel), and new calls wake the run through ``wake_fd`` (an eventfd the
role's queue writes on each enqueue), so a call never waits a poll tick for a free slot.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Self

import msgspec
import structlog

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import InvalidRequest, ProtocolError
from lilbee_workers.parent.attempt import Answered, Lost, next_attempt_id
from lilbee_workers.parent.calls import Call
from lilbee_workers.parent.handle import WorkerHandle
from lilbee_workers.transport.frames import FINAL_REPLIES, ChatChunk, ErrorFrame

log = structlog.get_logger("lilbee_workers.slots")
TICK_S = 0.1  # how often running calls' deadlines and cancels are checked


@dataclass
class Running:
    """One call in a slot: when it started, and its deadlines."""

    call: Call
    started: float
    kill_at: float
    cancel_deadline: float | None = None


class SlotRun:
    """Calls running side by side on one worker, until the dispatcher ends the run."""

    def __init__(self, worker: WorkerHandle, config: RoleConfig, slots: int) -> None:
        self.worker = worker
        self.config = config
        self.slots = slots
        self.running: dict[int, Running] = {}
        self.answered: list[tuple[Call, Answered]] = []
        """Calls answered since the last ``take_answered``."""
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    @property
    def free(self) -> int:
        return self.slots - len(self.running)

    def start(self, call: Call) -> Lost | None:
        """Send ``call`` to the worker in a free slot; the ``Lost`` if the pipe is gone
        (``call`` is then among the running calls the loss takes)."""
        attempt_id = next_attempt_id()
        call.ran_in_slots = True
        now = time.monotonic()
        running = Running(call, now, now + self.config.kill_after_s)
        try:
            self.worker.data.send(msgspec.structs.replace(call.request, id=attempt_id))
        except ProtocolError as exc:
            call.fail(InvalidRequest(f"request too large: {exc.message}", role=call.role))
            self.answered.append((call, Answered(error=True)))
            return None
        except (OSError, ValueError):
            self.running[attempt_id] = running
            return Lost(self.worker.exit_description())
        self.running[attempt_id] = running
        call.bind(self.worker.health, attempt_id)
        return None

    def pump(self, timeout: float = TICK_S) -> Lost | None:
        """Check deadlines, then wait up to ``timeout`` for frames (or a wake-up) and
        route them; the ``Lost`` when the worker failed or must go."""
        lost = self._check_deadlines()
        if lost is not None:
            return lost
        readable, dead = self.worker.wait_data(timeout, self.wake_fd)
        if readable:
            return self._read_available()
        if dead:
            return Lost("died")
        self._drain_wake()
        return None

    def take_answered(self) -> list[tuple[Call, Answered]]:
        answered, self.answered = self.answered, []
        return answered

    def take_running(self) -> list[Call]:
        """The calls still running (the worker is lost under them), unbound."""
        calls = [running.call for running in self.running.values()]
        for call in calls:
            call.unbind()
        self.running.clear()
        return calls

    def rates(self) -> list[float]:
        """Each running stream's completion tokens per second so far."""
        now = time.monotonic()
        return [
            round(running.call.tokens_so_far / max(now - running.started, 1e-3), 2)
            for running in list(self.running.values())
        ]

    # ------------------------------------------------------------------ inside

    def _check_deadlines(self) -> Lost | None:
        now = time.monotonic()
        for attempt_id, running in list(self.running.items()):
            call = running.call
            if call.expires_at is not None and now >= call.expires_at:
                call.time_out()  # the caller's own timeout: cancel, answer WorkerTimeout
            if running.cancel_deadline is None and call.cancelled:
                call.send_cancel()
                running.cancel_deadline = now + self.config.cancel_grace_s
            if running.cancel_deadline is not None and now >= running.cancel_deadline:
                # The worker ignored a cancel: it is stuck. This call is answered as
                # cancelled; the others are lost with the worker (not their doing).
                del self.running[attempt_id]
                call.unbind()
                call.fail(call.cancelled_error())
                reason = f"ignored cancel for {self.config.cancel_grace_s:g}s"
                return Lost(reason, kill=reason, crashed=False)
            if now >= running.kill_at:
                reason = f"overran the {self.config.kill_after_s:g}s kill_after_s deadline"
                return Lost(reason, kill=reason)
        return None

    def _read_available(self) -> Lost | None:
        """Route every frame that has arrived to its call."""
        data = self.worker.data
        while True:
            try:
                frame = data.recv()
            except (EOFError, OSError):
                return Lost("closed its data pipe")
            except ProtocolError as exc:
                reason = f"sent an undecodable frame ({exc.message})"
                return Lost(reason, kill=reason)
            running = self.running.get(getattr(frame, "id", 0))
            if running is None:
                log.debug("dropped stale frame", role=self.worker.role, frame=type(frame).__name__)
            elif isinstance(frame, ChatChunk):
                running.call.deliver_chunk(frame)
            elif isinstance(frame, FINAL_REPLIES):
                del self.running[frame.id]
                running.call.unbind()
                running.call.finish(frame)
                answer = Answered(error=isinstance(frame, ErrorFrame), frame=frame)
                self.answered.append((running.call, answer))
            if not data.poll(0):
                return None

    def _drain_wake(self) -> None:
        try:
            os.eventfd_read(self.wake_fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.wake_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
