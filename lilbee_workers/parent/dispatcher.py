"""One role's dispatcher: a bounded queue of calls, the role's worker, and the thread
that restarts it when it dies or hangs (gunicorn's arbiter, per role).

One call holds the role at a time. A non-streaming call without a timeout that finds
the role idle runs its pipe I/O in the caller's own thread (no thread hand-off on the
hot path); other calls are run by the dispatcher thread. Either way, every worker is
*started* on the dispatcher thread, which lives as long as the supervisor: Linux's
parent-death signal follows the thread that forked, not the process.

This module owns the queue and the worker lifecycle; one attempt's pipe protocol is in
``attempt``, the retry/backoff/circuit rules in ``policy``, the counters in ``stats``.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import structlog

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import ConfigError, WorkerError, WorkerUnavailable
from lilbee_workers.logs import MAX_LOG_BYTES, role_log_path
from lilbee_workers.parent import batch, policy
from lilbee_workers.parent.attempt import Answered, Lost, run_attempt
from lilbee_workers.parent.calls import Attempted, Call
from lilbee_workers.parent.policy import RestartPolicy, StartFailed
from lilbee_workers.parent.process import WorkerProcess
from lilbee_workers.parent.queue import Close, Control, Respawn, Restart, RoleQueue, WorkerExited
from lilbee_workers.parent.standby import Standby
from lilbee_workers.parent.stats import RoleStats
from lilbee_workers.transport.frames import Request
from lilbee_workers.types import RoleState, RoleStatus

log = structlog.get_logger("lilbee_workers.dispatcher")


class RoleDispatcher:
    """Owns one role: its queue, its worker process and its recovery."""

    def __init__(
        self,
        role: str,
        config: RoleConfig,
        log_dir: Path,
        max_frame_bytes: int,
        log_max_bytes: int = MAX_LOG_BYTES,
    ):
        self.role = role
        self.config = config
        self.log_path = role_log_path(log_dir, role)
        self.max_frame_bytes = max_frame_bytes
        self.log_max_bytes = log_max_bytes
        self.policy = RestartPolicy(config)
        self.stats = RoleStats()
        self.state = RoleState.STOPPED
        self.worker: WorkerProcess | None = None
        self.generation = 0
        self._generations = itertools.count(1)
        self._standby: Standby | None = None
        self.model_path = ""
        self.failed_reason = ""
        self.failed_log_tail = ""
        self.last_exit = ""
        self.started = threading.Event()
        self.queue = RoleQueue(role, config.queue_size)
        self._thread = threading.Thread(target=self._run, name=f"dispatch-{role}", daemon=True)

    # ================================================================== caller side

    def start(self) -> None:
        self._thread.start()
        if self.config.standby:
            self._standby = Standby(
                self.role,
                self._start_spare,
                lambda: self.queue.closing,
                self.config.cancel_grace_s,
                busy=lambda: self.queue.counts() != (0, 0),
            )
            self._standby.start()

    def submit(self, request: Request, block_s: float = 0.0, timeout: float | None = None) -> Call:
        """Queue a call for the dispatcher thread. A full queue answers ``Overloaded`` at
        once, or after waiting up to ``block_s`` for room; a failed role answers
        ``WorkerUnavailable``."""
        call = Call(self.role, request, timeout)
        self.queue.enqueue(call, block_s, self._refusal)
        return call

    def run_now(self, request: Request, block_s: float = 0.0, timeout: float | None = None) -> Call:
        """Run a call to its final frame. When the role is idle and the caller set no
        timeout, the caller's thread does the pipe I/O itself; otherwise the call queues
        like ``submit`` (so a caller with a timeout gets ``WorkerTimeout`` at its own
        deadline, while the dispatcher thread winds the worker down). Returns the call."""
        call = Call(self.role, request, timeout)
        if self.queue.enqueue(call, block_s, self._refusal, hold_if_idle=timeout is None):
            self._serve(call)
        return call

    def _refusal(self) -> WorkerError | None:
        """Why no call is taken now (a failed role cooling down), or None."""
        if self.state == RoleState.FAILED and self.policy.cooling_down():
            return self._unavailable()
        return None

    def restart(self, config: RoleConfig | None = None) -> threading.Event:
        """Graceful restart after the call in flight (optionally with a new config);
        clears a failed state. The event is set once the role is ready or failed."""
        control = Restart(config)
        self.queue.post(control)
        return control.done

    def close(self) -> None:
        """Refuse new calls, answer queued ones, stop the worker after the call in flight
        (a worker still loading is stopped at once)."""
        self.queue.close()
        self.queue.post(Close())

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        if self._thread.is_alive():
            worker = self.worker
            if worker is not None:
                worker.kill("supervisor closing")
            self._thread.join(10)
        return not self._thread.is_alive()

    @property
    def restarts(self) -> int:
        return self.stats.restarts

    def healthy(self) -> bool:
        """The dispatcher (and standby) thread runs, and the current worker is watched."""
        worker = self.worker
        standby_ok = self._standby is None or self._standby.alive()
        return self._thread.is_alive() and standby_ok and (worker is None or worker.monitoring())

    def status(self) -> RoleStatus:
        """A snapshot, safe from any thread (queue and counters are read under their locks)."""
        queued, in_flight = self.queue.counts()
        state, worker = self.state, self.worker
        ready = worker.ready if worker is not None else None
        return RoleStatus(
            role=self.role,
            state=state.value,
            model=self.model_path or self.config.model,
            generation=self.generation,
            last_exit=self.failed_reason if state == RoleState.FAILED else self.last_exit,
            in_flight=in_flight,
            queued=queued,
            log_path=str(self.log_path),
            chat_template=ready.chat_template if ready is not None else None,
            standby_pid=self._standby.pid() if self._standby is not None else None,
            **(worker.vitals() if worker is not None and state.serving else {}),
            **self.stats.counts(),
        )

    def _shutting_down(self) -> WorkerUnavailable:
        return WorkerUnavailable(f"{self.role} is shutting down", role=self.role)

    def _unavailable(self) -> WorkerUnavailable:
        return policy.unavailable_error(
            self.role,
            self.failed_reason,
            max(0.0, self.policy.failed_until - time.monotonic()),
            str(self.log_path),
            self.failed_log_tail,
        )

    # ================================================================== dispatcher thread

    def _run(self) -> None:
        try:
            self._start_worker(after_crash=False)
        finally:
            self.started.set()
            self.queue.release()
        while True:
            item = self.queue.next_item()
            try:
                if isinstance(item, Close):
                    self._shut_down()
                    return
                self._handle(item)
            except Exception as exc:
                # Nothing may end this thread but close: log, count, answer what was
                # waiting on this step, and go on serving.
                self.stats.internal_error()
                log.exception("dispatcher step failed", role=self.role, step=type(item).__name__)
                if isinstance(item, Call) and not item.finished:
                    item.fail(WorkerError(f"{self.role}: internal error: {exc!r}", role=self.role))
                if isinstance(item, Close):
                    return

    def _handle(self, item: Control | Call) -> None:
        """One step of the dispatcher thread. Every waiter is released even if it fails."""
        if isinstance(item, Respawn):  # asked by the call holding the role
            try:
                item.ok = self._has_live_worker() or self._start_worker(after_crash=True)
            finally:
                item.done.set()
        elif isinstance(item, Restart):
            try:
                self._graceful_restart(item)
            finally:
                item.done.set()
                self.queue.release()
        elif isinstance(item, WorkerExited):
            try:
                self._on_idle_exit(item.worker)
            finally:
                self.queue.release()
        elif isinstance(item, Call):
            self._serve(batch.coalesce(item, self.queue, self.config))

    def _has_live_worker(self) -> bool:
        worker = self.worker
        return worker is not None and self.state == RoleState.READY and worker.alive()

    # ------------------------------------------------------------------ calls

    def _serve(self, call: Attempted) -> None:
        """Run a call that holds the role, then release the role."""
        started = time.monotonic()
        try:
            if call.cancelled:
                call.fail(call.cancelled_error())
            elif not self._ensure_worker():
                self._give_up(call, self._unavailable())
            else:
                self._run_call(call)
        finally:
            elapsed_ms = (time.monotonic() - started) * 1000.0
            for _ in getattr(call, "parts", (call,)):
                self.stats.latency(elapsed_ms)
            self.queue.release()

    def _run_call(self, call: Attempted) -> None:
        """Attempts until the call is answered, under the retry rules of ``policy``."""
        attempt = 0
        while True:
            worker = self.worker
            assert worker is not None
            self.state = RoleState.BUSY
            try:
                outcome = run_attempt(worker, call, self.config)
            finally:
                if self.state == RoleState.BUSY:
                    self.state = RoleState.READY
            if isinstance(outcome, Answered):
                batch.account(self.stats, call, outcome)
                return
            reason = self._retire(worker, outcome)
            if self.queue.closing:
                self._give_up(
                    call, WorkerUnavailable(f"{self.role} is shutting down", role=self.role)
                )
                return
            if call.cancelled:  # the caller is gone: nothing to retry for
                call.fail(call.cancelled_error())
                self._respawn()
                return
            if not policy.should_retry(attempt, call.chunks_delivered):
                error = policy.crashed_error(
                    self.role,
                    attempt + 1,
                    reason,
                    call.chunks_delivered,
                    str(self.log_path),
                    worker.log_tail(),
                )
                self._give_up(call, error)
                self._respawn()
                return
            attempt += 1
            call.retried = True
            self.stats.retrying()
            log.warning("retrying call on a fresh worker", role=self.role, reason=reason)
            if not self._respawn():
                self._give_up(call, self._unavailable())
                return

    def _give_up(self, call: Attempted, error: WorkerError) -> None:
        self.stats.failed()
        call.fail(error)

    # ------------------------------------------------------------------ lifecycle

    def _ensure_worker(self) -> bool:
        if self.worker is not None and self.state.serving:
            return True  # a dead one is seen by the call's own wait, and retried
        if self.state == RoleState.FAILED and self.policy.cooling_down():
            return False
        if self.state == RoleState.FAILED:
            self.policy.reset()  # the cool-down is over: a fresh series of tries
        return self._respawn()

    def _respawn(self) -> bool:
        """A fresh worker after a crash, started on the dispatcher thread (whichever
        thread is asking). False when the role is failed or closing."""
        if threading.current_thread() is self._thread:
            return self._start_worker(after_crash=True)
        control = Respawn()
        self.queue.post(control)
        control.done.wait()
        return control.ok

    def _start_worker(self, after_crash: bool) -> bool:
        """Bring a fresh worker up (with backoff); False when the role is failed."""
        if self.queue.closing:
            return False
        old = self.worker
        if old is not None and old.alive():  # never two workers for one role
            old.kill("replaced by a fresh worker")
            old.join(5)
            old.close_data()
        if after_crash:
            if self.policy.circuit_open():
                self._fail(
                    f"crashed {self.policy.recent_crashes()} times within "
                    f"{self.config.restart_window_s:g}s; last: {self.last_exit}",
                    "",
                )
                return False
            spare = self._standby.take() if self._standby is not None else None
            if spare is not None:  # hot standby: no load to wait for
                self.worker, self.generation = spare, spare.generation
                self.state = RoleState.READY
                return True
            self.state = RoleState.RESTARTING
            self.queue.sleep(self.policy.restart_delay())
        else:
            self.state = RoleState.STARTING
        try:
            self.worker = self.policy.bring_up(self._spawn_once, sleep=self.queue.sleep)
        except StartFailed as exc:
            if not self.queue.closing:
                self._fail(exc.message, exc.log_tail)
            return False
        except ConfigError as exc:
            self._fail(str(exc), "")
            return False
        except Exception as exc:  # EMFILE, ENOMEM, a log dir gone: say so, do not die
            log.exception("worker start failed", role=self.role)
            self._fail(f"could not start a worker: {type(exc).__name__}: {exc}", "")
            return False
        self.state = RoleState.READY
        self.failed_reason = ""
        return True

    def _spawn_once(self) -> WorkerProcess:
        if self.queue.closing:
            raise StartFailed(f"{self.role} is shutting down", crashed=False)
        worker = self._new_worker()
        self.model_path, self.generation = worker.model_path, worker.generation
        try:
            worker.start(abandon=lambda: self.queue.closing)
        except StartFailed as exc:
            self.last_exit = exc.message
            log.error("worker failed to start", role=self.role, reason=exc.message)
            raise
        return worker

    def _start_spare(self) -> WorkerProcess:
        """A standby worker, loaded and warmed (on the standby thread)."""
        spare = self._new_worker(warm_up=True)
        spare.start(abandon=lambda: self.queue.closing)
        return spare

    def _new_worker(self, warm_up: bool = False) -> WorkerProcess:
        """A worker for this role, not started yet; ``StartFailed`` if its model is missing."""
        model_path = self.config.resolved_model()
        if not Path(model_path).is_file():
            raise StartFailed(f"model file not found: {model_path}", crashed=False)
        return WorkerProcess(
            self.role,
            self.config,
            model_path,
            self.log_path,
            next(self._generations),
            self.max_frame_bytes,
            on_exit=lambda gone: self.queue.post(WorkerExited(gone)),
            log_max_bytes=self.log_max_bytes,
            warm_up=warm_up,
        )

    def _retire(self, worker: WorkerProcess, lost: Lost) -> str:
        """Finish off a worker that failed under a call (killing it if it still runs),
        count it, and return why it is gone."""
        if lost.kill is not None:
            worker.kill(lost.kill)
        worker.join(5)
        worker.close_data()
        reason = worker.exit_description()
        self.stats.restarted()
        if lost.crashed:
            self.policy.record_crash()
        self.last_exit = reason
        self.state = RoleState.CRASHED
        log.warning("worker lost", role=self.role, reason=reason)
        return reason

    def _on_idle_exit(self, worker: WorkerProcess) -> None:
        """A worker died between calls: restart it now, so no caller pays for it."""
        if worker is not self.worker or self.queue.closing or not self.state.serving:
            return
        self._retire(worker, Lost("died while idle"))
        self._start_worker(after_crash=True)

    def _graceful_restart(self, control: Restart) -> None:
        if control.config is not None:
            self.config = control.config
            self.policy = RestartPolicy(control.config)
            self.queue.size = control.config.queue_size
        else:
            self.policy.reset()
        self.state = RoleState.DRAINING
        if self.worker is not None:
            self.worker.stop(self.config.cancel_grace_s)
        spare = self._standby.take() if self._standby is not None else None
        if spare is not None:  # loaded with the old settings: the standby loads anew
            spare.stop(self.config.cancel_grace_s)
        self._start_worker(after_crash=False)
        control.done.set()

    def _fail(self, reason: str, log_tail: str) -> None:
        self.state = RoleState.FAILED
        self.failed_reason = reason
        self.failed_log_tail = log_tail
        self.policy.open_circuit()
        log.error("role failed", role=self.role, reason=reason)
        for call in self.queue.take_calls():
            self._give_up(call, self._unavailable())

    def _shut_down(self) -> None:
        for call in self.queue.take_calls():
            call.fail(self._shutting_down())
        for control in self.queue.take_controls():
            if isinstance(control, (Restart, Respawn)):
                control.done.set()
        if self.worker is not None:
            self.worker.stop(self.config.cancel_grace_s)
        if self._standby is not None:
            self._standby.close()
        self.state = RoleState.STOPPED
