"""One role's dispatcher: a bounded queue of calls, the role's worker, and the thread
that restarts it when it dies or hangs (gunicorn's arbiter, per role).

One call holds the role at a time, or, on a worker that batches (chat ``parallel`` > 1),
the calls in its slots side by side (``slots``). A non-streaming call without a timeout
that finds a one-call role idle runs its pipe I/O in the caller's own thread (no thread
hand-off on the hot path); other calls are run by the dispatcher thread. Either way,
every worker is *started* on the dispatcher thread, which lives as long as the
supervisor: Linux's parent-death signal follows the thread that forked, not the process.

Here: the queue-facing verbs, the control path and the dispatcher thread; calls run in
``call_path``. Workers come and go in ``lifecycle``; one attempt is ``attempt``; the
retry rules ``policy`` and ``merging``; counters ``stats``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import WorkerError, WorkerUnavailable
from lilbee_workers.logs import MAX_LOG_BYTES, role_log_path
from lilbee_workers.parent import batch
from lilbee_workers.parent.call_path import CallPath
from lilbee_workers.parent.calls import Attempted, Call
from lilbee_workers.parent.factory import process_factory
from lilbee_workers.parent.handle import WorkerFactory, WorkerHandle
from lilbee_workers.parent.lifecycle import RoleLifecycle
from lilbee_workers.parent.quarantine import Quarantine
from lilbee_workers.parent.queue import (
    Close,
    Control,
    Load,
    Recover,
    Respawn,
    Restart,
    RoleQueue,
    Unload,
    WorkerExited,
)
from lilbee_workers.parent.slots import SlotRun
from lilbee_workers.parent.snapshot import lifecycle_fields
from lilbee_workers.parent.stats import RoleStats
from lilbee_workers.transport.frames import Request
from lilbee_workers.types import RoleState, RoleStatus

log = structlog.get_logger("lilbee_workers.dispatcher")


class RoleDispatcher(CallPath):
    """Owns one role: its queue, its worker process and its recovery."""

    def __init__(
        self,
        role: str,
        config: RoleConfig,
        log_dir: Path,
        max_frame_bytes: int,
        log_max_bytes: int = MAX_LOG_BYTES,
        new_worker: WorkerFactory | None = None,
        replica: int = 0,
        hand_over: Callable[[list[Call], RoleDispatcher], bool] | None = None,
        quarantine: Quarantine | None = None,
    ):
        """``new_worker`` makes the workers (default: real processes; unit tests pass a
        fake). ``replica``: which of the role's replicas this is; ``hand_over`` gives calls
        lost with this worker to another live replica (True: taken), sparing a restart."""
        self.role = role
        self.replica = replica
        self._hand_over = hand_over
        self._max_frame = max_frame_bytes
        self.log_path = role_log_path(log_dir, role, replica)
        self.stats = RoleStats()
        self.quarantine = Quarantine(role) if quarantine is None else quarantine
        self.started = threading.Event()
        self.queue = RoleQueue(role, config.queue_size)
        factory = new_worker or process_factory(role, self.log_path, max_frame_bytes, log_max_bytes)
        self.life = RoleLifecycle(role, config, self.log_path, self.queue, self.stats, factory)
        self.life.recovers_alone = hand_over is not None
        self.queue.prefer = self._needs_no_switch
        self.slot_run: SlotRun | None = None  # the calls running side by side, if any
        name = f"dispatch-{role}" + (f".{replica}" if replica else "")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def config(self) -> RoleConfig:
        return self.life.config

    @property
    def state(self) -> RoleState:
        return self.life.state

    @property
    def worker(self) -> WorkerHandle | None:
        return self.life.worker

    # ================================================================== caller side

    def start(self) -> None:
        self._thread.start()
        if self.config.standby:
            self.life.start_standby()

    def submit(self, request: Request, block_s: float = 0.0, timeout: float | None = None) -> Call:
        """Queue a call for the dispatcher thread. A full queue answers ``Overloaded`` at
        once, or after waiting up to ``block_s`` for room; a failed role answers
        ``WorkerUnavailable``; a quarantined poison request ``WorkerCrashed``."""
        self.quarantine.check(request, self.life.wanted(request))
        call = Call(self.role, request, timeout)
        self.queue.enqueue(call, block_s, self._refusal)
        return call

    def run_now(self, request: Request, block_s: float = 0.0, timeout: float | None = None) -> Call:
        """Run a call to its final frame. When the role is idle and the caller set no
        timeout, the caller's thread does the pipe I/O itself; otherwise the call queues
        like ``submit`` (so a caller with a timeout gets ``WorkerTimeout`` at its own
        deadline, while the dispatcher thread winds the worker down). Returns the call."""
        self.quarantine.check(request, self.life.wanted(request))
        call = Call(self.role, request, timeout)
        # Not on a worker that batches: the holder of its slots serves every call that
        # joins them, and a caller's thread must return with its own answer.
        hold = timeout is None and self._needs_no_switch(call) and not self._batching()
        if self.queue.enqueue(call, block_s, self._refusal, hold_if_idle=hold):
            self._serve(call)
        return call

    def load(self, model: str) -> Load:
        """Make ``model`` the default and load it once the call in flight is done; wait
        on the control's ``done``, then read its ``error``."""
        control = Load(model)
        self.quarantine.clear()  # another default model: what was poison may not be
        self.queue.post(control)
        return control

    def unload(self) -> threading.Event:
        """Stop the worker once the call in flight is done, freeing its memory."""
        control = Unload()
        self.queue.post(control)
        return control.done

    def _refusal(self) -> WorkerError | None:
        """Why no call is taken now (a failed role cooling down), or None."""
        if self.state == RoleState.FAILED and self.life.policy.cooling_down():
            return self.life.unavailable()
        return None

    def restart(self, config: RoleConfig | None = None) -> threading.Event:
        """Graceful restart after the call in flight (optionally with a new config);
        clears a failed state. The event is set once the role is ready or failed."""
        control = Restart(config)
        self.quarantine.clear()  # an operator's restart or a reload: a fresh start
        self.queue.post(control)
        return control.done

    def close(self) -> None:
        """Refuse new calls, answer queued ones, stop the worker after the call in flight
        (a worker still loading is stopped at once)."""
        self.queue.close()
        for call in self.queue.take_calls():  # at once, not after the call in flight
            call.fail(self.shutting_down_error())
        self.queue.post(Close())

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        if self._thread.is_alive():
            worker = self.worker
            if worker is not None:
                worker.kill("supervisor closing")
            self._thread.join(10)
        return not self._thread.is_alive()

    def finished(self) -> bool:
        """The dispatcher thread has ended (after close): nothing of this replica runs."""
        return self._thread.ident is not None and not self._thread.is_alive()

    def healthy(self) -> bool:
        """The dispatcher (and standby) thread runs, and the current worker is watched."""
        worker, standby = self.worker, self.life.standby
        standby_ok = standby is None or standby.alive()
        return self._thread.is_alive() and standby_ok and (worker is None or worker.monitoring())

    def status(self) -> RoleStatus:
        """A snapshot, safe from any thread (queue and counters are read under their locks)."""
        queued, in_flight = self.queue.counts()
        worker, run = self.worker, self.slot_run
        ready = worker.ready if worker is not None else None
        return RoleStatus(
            role=self.role,
            in_flight=in_flight,
            slots=ready.slots if ready is not None else self.config.parallel,
            stream_tokens_per_s=run.rates() if run is not None else [],
            kv_cache_bytes=ready.kv_cache_bytes if ready is not None else 0,
            queued=queued,
            log_path=str(self.log_path),
            **lifecycle_fields(self.life),
            **self.stats.counts(),
            quarantined=self.quarantine.refused,
        )

    def shutting_down_error(self) -> WorkerUnavailable:
        return WorkerUnavailable(f"{self.role} is shutting down", role=self.role)

    # ================================================================== dispatcher thread

    def _run(self) -> None:
        try:
            self.life.start_worker(after_crash=False)
        finally:
            self.started.set()
            self.queue.release()
        while True:
            item: Control | Call | None = None
            try:
                idle = self.life.wake_in()  # in the try: an error here must not end the thread
                if idle is not None and self.queue.counts()[1]:  # a caller's thread runs a call
                    idle = self.config.keep_alive_s
                item = self.queue.next_item(idle)
                if item is None:
                    self.life.on_idle()
                elif isinstance(item, Close):
                    self._shut_down()
                    return
                else:
                    self._handle(item)
            except Exception as exc:
                # Nothing may end this thread but close: log, count, answer what was
                # waiting on this step, and go on serving.
                self.stats.internal_error()
                step = type(item).__name__ if item is not None else "idle"
                log.exception("dispatcher step failed", role=self.role, step=step)
                if isinstance(item, Call) and not item.finished:
                    item.fail(WorkerError(f"{self.role}: internal error: {exc!r}", role=self.role))
                if isinstance(item, Close):
                    return
                self.queue.sleep(0.5 if item is None else 0)  # a failing idle step: no spin

    def _handle(self, item: Control | Call) -> None:
        """One step of the dispatcher thread. Every waiter is released even if it fails."""
        if isinstance(item, Respawn):  # asked by the call holding the role
            try:
                self.life.respawn(item)
            finally:
                item.done.set()
        elif isinstance(item, (Load, Unload, Restart, Recover, WorkerExited)):
            try:
                self.life.apply(item)
            finally:
                if not isinstance(item, WorkerExited):
                    item.done.set()
                self.queue.release()
        elif isinstance(item, Call):
            ready = self.worker.ready if self.worker is not None else None
            n_embd = ready.n_embd if ready is not None and self._needs_no_switch(item) else 0
            self._serve(batch.coalesce(item, self.queue, self.config, self._max_frame, n_embd))

    # ------------------------------------------------------------------ workers

    def _needs_no_switch(self, call: Call) -> bool:
        """Whether the loaded worker serves the model ``call`` wants."""
        life = self.life
        return life.worker is not None and life.wanted(call.request) == life.model_name

    def _ensure_model(self, call: Attempted) -> WorkerError | None:
        """Switch to the model ``call`` wants (or load it after an unload), on the
        dispatcher thread; the error if it cannot load (the old model serves again)."""
        life = self.life
        wanted = life.wanted(call.request)
        if life.state == RoleState.FAILED:
            if wanted == life.model_name or life.policy.cooling_down():
                return None  # _ensure_worker refuses, or restarts that model
            life.policy.reset()  # cooled down: a fresh try, with the model asked for
        elif wanted == life.model_name and life.state != RoleState.UNLOADED:
            return None
        return self._respawn(wanted).error

    def _ensure_worker(self) -> bool:
        life = self.life
        if life.worker is not None and life.state.serving:
            return True  # a dead one is seen by the call's own wait, and retried
        if life.state == RoleState.FAILED and life.policy.cooling_down():
            return False
        if life.state == RoleState.FAILED:
            life.policy.reset()  # the cool-down is over: a fresh series of tries
        return self._respawn().ok

    def _respawn(self, model: str | None = None) -> Respawn:
        """A fresh worker after a crash, or one serving ``model``, started on the
        dispatcher thread whichever thread asks (``ok`` False: the role failed)."""
        control = Respawn(model=model)
        if threading.current_thread() is self._thread:
            self.life.respawn(control)
        else:
            self.queue.post(control)
            control.done.wait()
        return control

    def _shut_down(self) -> None:
        self.queue.close()  # a retired replica's too: nothing is taken after this
        for call in self.queue.take_calls():
            call.fail(self.shutting_down_error())
        self.queue.refuse_controls()
        self.life.shut_down()
