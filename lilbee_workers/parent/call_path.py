"""A role's call path: serve the call that holds the role, run its attempts (one at a
time, or side by side in the slots of a worker that batches them), and what follows
when the worker is lost under them. Mixed into ``RoleDispatcher``, which owns the queue,
the lifecycle and the control path; this half only runs calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from lilbee_workers.errors import WorkerError, WorkerUnavailable
from lilbee_workers.parent import batch, merging, policy
from lilbee_workers.parent.attempt import Answered, Lost, run_attempt
from lilbee_workers.parent.calls import Attempted, Call
from lilbee_workers.parent.handle import WorkerHandle
from lilbee_workers.parent.lifecycle import RoleLifecycle
from lilbee_workers.parent.quarantine import Quarantine
from lilbee_workers.parent.queue import Respawn, RoleQueue
from lilbee_workers.parent.slots import SlotRun
from lilbee_workers.parent.stats import RoleStats
from lilbee_workers.types import RoleState

log = structlog.get_logger("lilbee_workers.dispatcher")


class CallPath:
    """The call-running half of a role's dispatcher."""

    role: str
    life: RoleLifecycle
    queue: RoleQueue
    stats: RoleStats
    quarantine: Quarantine
    log_path: Path
    slot_run: SlotRun | None
    _thread: threading.Thread
    _hand_over: Callable[[list[Call], Any], bool] | None

    # The control path's verbs this half calls (``RoleDispatcher`` has them).
    def shutting_down_error(self) -> WorkerUnavailable:
        raise NotImplementedError

    def _ensure_model(self, call: Attempted) -> WorkerError | None:
        raise NotImplementedError

    def _ensure_worker(self) -> bool:
        raise NotImplementedError

    def _respawn(self, model: str | None = None) -> Respawn:
        raise NotImplementedError

    def _batching(self) -> bool:
        """Whether the worker runs several calls at once (its slots)."""
        worker = self.life.worker
        return worker is not None and worker.ready is not None and worker.ready.slots > 1

    def _serve(self, call: Attempted) -> None:
        """Run a call that holds the role, then release the role. A call's latency
        runs from when it was queued to its answer: what its caller waited."""
        handed_over = False
        try:
            if call.settle_if_abandoned():
                pass  # its caller left, or its deadline passed while it waited
            elif (switch_failed := self._ensure_model(call)) is not None:
                self._give_up(call, switch_failed)
            elif not self._ensure_worker():
                self._give_up(call, self.life.unavailable())
            else:
                handed_over = self._run_call(call)
        finally:
            now = time.monotonic()
            in_slots = isinstance(call, Call) and call.ran_in_slots  # counted as answered
            for part in () if handed_over or in_slots else batch.calls_of(call):
                self.stats.latency((now - part.enqueued_at) * 1000.0)  # counted where it ends
            self.life.last_used = time.monotonic()
            self.queue.release()

    def _run_call(self, call: Attempted) -> bool:
        """Attempts until the call is answered, under the rules of ``policy`` and
        ``merging``. True if its calls were moved on for their retries (to another
        replica, or a merged batch's parts each to the head of this role's line)."""
        worker = self.life.worker
        assert worker is not None
        # Slots are the dispatcher thread's: a caller's thread that holds the role (it
        # found a one-call role, or none loaded) runs its own call only. A retry runs alone.
        on_dispatcher = threading.current_thread() is self._thread
        if self._batching() and on_dispatcher and isinstance(call, Call) and not call.retried:
            return self._run_slots(call, worker)
        while True:
            life = self.life
            worker = life.worker
            assert worker is not None
            life.state = RoleState.BUSY
            try:
                outcome = run_attempt(worker, call, life.config)
            finally:
                if life.state == RoleState.BUSY:
                    life.state = RoleState.READY
            if isinstance(outcome, Answered):
                batch.account(self.stats, call, outcome)
                return False
            after = self._after_loss(worker, outcome, batch.calls_of(call))
            if isinstance(after, bool):
                return after
            call = after  # alone already: retried here, in this loop

    def _run_slots(self, first: Call, worker: WorkerHandle) -> bool:
        """Run calls side by side on a worker that batches them, taking queued calls
        into slots as they free up, until none runs. A lost worker loses them all:
        each is then judged alone (``_after_loss``). True if calls were moved on."""
        assert worker.ready is not None
        life = self.life
        with SlotRun(worker, life.config, worker.ready.slots) as run:
            self.queue.listen(run.wake_fd)
            self.slot_run = run
            life.state = RoleState.BUSY
            try:
                lost = run.start(first)
                while lost is None and run.running:
                    lost = run.pump()
                    self._account(run)
                    while lost is None:  # one at a time: none is taken once one is lost
                        taken = self.queue.take_for_slots(min(run.free, 1), len(run.running))
                        if not taken:
                            break
                        if not taken[0].settle_if_abandoned():
                            lost = run.start(taken[0])
            except Exception as exc:  # a bug: no caller may be left waiting for good
                error = WorkerError(f"{self.role}: internal error: {exc!r}", role=self.role)
                for call in run.take_running():
                    call.fail(error)
                raise
            finally:
                self._account(run)  # what was answered on the way out, too
                self.queue.listen(-1)
                self.queue.slots_done()
                self.slot_run = None
                if life.state == RoleState.BUSY:
                    life.state = RoleState.READY
            if lost is None:
                return False
            after = self._after_loss(worker, lost, run.take_running())
        if isinstance(after, bool):
            return after
        return self._run_call(after)

    def _account(self, run: SlotRun) -> None:
        """Count the calls the slots answered since the last count."""
        for call, answer in run.take_answered():
            batch.account(self.stats, call, answer)
            self.stats.latency((time.monotonic() - call.enqueued_at) * 1000.0)

    def _after_loss(self, worker: WorkerHandle, outcome: Lost, parts: list[Call]) -> bool | Call:
        """The worker was lost under ``parts``: retire it, answer the parts that end
        here, and retry each other part alone. A call to retry here and now, or True
        if the retries were moved on (another replica, the head of the line)."""
        reason = self.life.retire(worker, outcome)
        tail = worker.log_tail()
        steps = merging.after_loss(outcome, parts, self.queue.closing)
        if not policy.blames_the_request(worker.kill_reason is not None, reason):
            for part in parts:
                part.lost_from_outside = True
        crashed = partial(policy.crashed_error, self.role, reason=reason, log_tail=tail)
        closing = self.shutting_down_error()
        retry = batch.answer_lost(parts, steps, self._give_up, crashed, closing, str(self.log_path))
        if not retry:
            if not self.queue.closing:
                self._respawn()
            return False
        for part in retry:
            part.retried = True
            part.ran_in_slots = False  # its retry runs alone, and counts its latency so
            self.stats.retrying()
        if self._hand_over is not None and self._hand_over(retry, self):
            log.warning("retrying call on another replica", role=self.role, reason=reason)
            return True  # and the replica posted a Recover for this worker
        log.warning("retrying call on a fresh worker", role=self.role, reason=reason)
        if not self._respawn().ok:
            for part in retry:
                self._give_up(part, self.life.unavailable())
            return False
        if len(retry) == 1:
            return retry[0]
        # Each alone, first in line, in their order; a retiring replica has no line to
        # come back to, so those run here, one by one, on the fresh worker.
        kept = [part for part in reversed(retry) if not self.queue.take_over(part)]
        for part in reversed(kept):
            if self.queue.closing:
                self._give_up(part, self.shutting_down_error())
            else:
                self._run_call(part)
        return len(kept) < len(retry)

    def _give_up(self, call: Attempted, error: WorkerError) -> None:
        """Answer ``call`` with ``error``; quarantine it if it is poison by its own doing."""
        self.stats.failed()
        if not (isinstance(call, Call) and call.lost_from_outside):
            self.quarantine.remember(call, self.life.wanted, error, self.life.config.quarantine_s)
        call.fail(error)
