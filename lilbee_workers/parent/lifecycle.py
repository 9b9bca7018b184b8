"""One role's worker lifecycle: bring a worker up (with backoff, or from the standby),
retire one that failed, restart gracefully, fail the role when the circuit opens.

Owned by its dispatcher, and mutated only by the thread that holds the role (see
``queue``): the dispatcher thread for starts and restarts, a caller's thread for the
call it runs. Other threads only read snapshots (``status``).
"""

from __future__ import annotations

import functools
import itertools
import time
from pathlib import Path

import structlog

from lilbee_workers import catalog
from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import ConfigError, ModelError, WorkerUnavailable
from lilbee_workers.parent import policy
from lilbee_workers.parent.attempt import Lost
from lilbee_workers.parent.broken_models import BrokenModels
from lilbee_workers.parent.handle import WorkerFactory, WorkerHandle
from lilbee_workers.parent.policy import RestartPolicy, StartFailed
from lilbee_workers.parent.queue import (
    Load,
    Recover,
    Respawn,
    Restart,
    RoleQueue,
    Unload,
    WorkerExited,
)
from lilbee_workers.parent.standby import Standby, renewed
from lilbee_workers.parent.stats import RoleStats
from lilbee_workers.transport.frames import Request
from lilbee_workers.types import RoleState

log = structlog.get_logger("lilbee_workers.lifecycle")
_NO_RECOVERY = (RoleState.UNLOADED, RoleState.FAILED)  # no worker wanted; circuit open


class RoleLifecycle:
    """The role's current worker, its state, and how workers come and go."""

    def __init__(
        self,
        role: str,
        config: RoleConfig,
        log_path: Path,
        queue: RoleQueue,
        stats: RoleStats,
        new_worker: WorkerFactory,
    ) -> None:
        self.role = role
        self.config = config
        self.log_path = log_path
        self.queue = queue
        self.stats = stats
        self._new_worker = new_worker
        self.policy = RestartPolicy(config)
        self.state = RoleState.STOPPED
        self.worker: WorkerHandle | None = None
        self.generation = 0
        self._generations = itertools.count(1)
        self.standby: Standby | None = None
        self.model_path = ""
        self.failed_reason = self.failed_log_tail = ""
        self.last_exit = ""
        self.default_model = catalog.default_name(config)
        self.model_name = self.default_model
        """The model the current worker serves (or the next one will)."""
        self.broken = BrokenModels(role, str(log_path))
        self.last_used = time.monotonic()
        """When the role last finished a call (for ``keep_alive_s``)."""
        self.recovers_alone = False
        """A replica: once failed, it starts again after its cool-down, unasked."""

    def start_standby(self) -> Standby:
        """Keep a loaded spare beside the worker (``standby = true``)."""
        self.standby = Standby(
            self.role,
            self._start_spare,
            lambda: self.queue.closing,
            self.config.cancel_grace_s,
            busy=lambda: self.queue.counts() != (0, 0),
        )
        self.standby.start()
        return self.standby

    def has_live_worker(self) -> bool:
        worker = self.worker
        return worker is not None and self.state == RoleState.READY and worker.alive()

    def unavailable(self) -> WorkerUnavailable:
        """The error for calls while the role is failed (with the log's tail)."""
        return policy.unavailable_error(
            self.role,
            self.failed_reason,
            max(0.0, self.policy.failed_until - time.monotonic()),
            str(self.log_path),
            self.failed_log_tail,
        )

    # ------------------------------------------------------------------ bring up

    def start_worker(self, after_crash: bool) -> bool:
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
                self.fail(
                    f"crashed {self.policy.recent_crashes()} times within "
                    f"{self.config.restart_window_s:g}s; last: {self.last_exit}",
                    "",
                )
                return False
            spare = self._take_spare()
            if spare is not None:  # hot standby: no load to wait for
                self.worker, self.generation = spare, spare.generation
                self.state = RoleState.READY
                return True
            self._begin_load(RoleState.RESTARTING)
            self.queue.sleep(self.policy.restart_delay())
        else:
            self._begin_load(RoleState.STARTING)
        return self._bring_up()

    def _begin_load(self, state: RoleState) -> None:
        """Enter ``state`` with the progress reset first (status reads the state first)."""
        self.stats.load_begins()
        self.state = state

    def _bring_up(self) -> bool:
        try:
            self.worker = self.policy.bring_up(self._spawn_once, sleep=self.queue.sleep)
        except StartFailed as exc:
            if not self.queue.closing:
                self.fail(exc.message, exc.log_tail)
            return False
        except ConfigError as exc:
            self.fail(str(exc), "")
            return False
        except Exception as exc:  # EMFILE, ENOMEM, a log dir gone: say so, do not die
            log.exception("worker start failed", role=self.role)
            self.fail(f"could not start a worker: {type(exc).__name__}: {exc}", "")
            return False
        self.state = RoleState.READY
        self.failed_reason = ""
        self.last_used = time.monotonic()  # keep-alive counts from when it is up
        return True

    def _spawn_once(self) -> WorkerHandle:
        if self.queue.closing:
            raise StartFailed(f"{self.role} is shutting down", crashed=False)
        worker = self._make_worker(warm_up=False)
        self.model_path, self.generation = worker.model_path, worker.generation
        self.stats.loading(worker.generation)  # its progress is what status shows
        worker.on_progress = functools.partial(self.stats.load_progressed, worker.generation)
        try:
            worker.start(abandon=lambda: self.queue.closing)
        except StartFailed as exc:
            self.last_exit = exc.message
            log.error("worker failed to start", role=self.role, reason=exc.message)
            raise
        return worker

    def _start_spare(self) -> WorkerHandle:
        """A standby worker, loaded and warmed (on the standby thread)."""
        spare = self._make_worker(warm_up=True)
        spare.start(abandon=lambda: self.queue.closing)
        return spare

    def _take_spare(self) -> WorkerHandle | None:
        """The standby's spare, if it serves the model wanted now."""
        spare = self.standby.take() if self.standby is not None else None
        if spare is not None and spare.model_path != self._worker_config().resolved_model():
            spare.stop(self.config.cancel_grace_s)  # loaded for another model
            return None
        return spare

    def _worker_config(self) -> RoleConfig:
        return catalog.config_for(self.config, self.model_name)

    def _make_worker(self, warm_up: bool) -> WorkerHandle:
        """A worker for this role, not started yet (``StartFailed`` if the factory can
        tell already that it cannot start: a local worker's model file missing)."""
        worker_config = self._worker_config()
        model_path = worker_config.resolved_model()

        def on_exit(gone: WorkerHandle) -> None:
            self.queue.post(WorkerExited(gone))

        generation = next(self._generations)
        return self._new_worker(worker_config, model_path, generation, on_exit, warm_up)

    # ------------------------------------------------------------------ models

    def wanted(self, request: Request) -> str:
        """The model a request is for: the one it names, else the role's default."""
        return getattr(request, "model", None) or self.default_model

    def idle_timeout(self) -> float | None:
        """Seconds until ``keep_alive_s`` unloads the idle model (<= 0: now); None when
        it never will."""
        if not self.config.keep_alive_s or self.worker is None or not self.state.serving:
            return None  # nothing loaded to unload (a failed role keeps its cool-down)
        return self.last_used + self.config.keep_alive_s - time.monotonic()

    def wake_in(self) -> float | None:
        """Seconds until ``on_idle`` has work, with no call arriving: a keep-alive that
        ends, or a failed replica's cool-down (a replica comes back by itself: routing
        sends it no call while a sibling serves). None: nothing to wake for."""
        if self.state == RoleState.FAILED and self.recovers_alone:
            return max(0.0, self.policy.failed_until - time.monotonic()) + 0.05
        return self.idle_timeout()

    def on_idle(self) -> None:
        """Nothing ran for a while (dispatcher thread): unload a model past its
        ``keep_alive_s``, or start a failed replica again once it has cooled down."""
        if not self.queue.hold_if_idle():
            return
        try:
            if self.state == RoleState.FAILED and self.recovers_alone:
                if not self.policy.cooling_down():
                    self.policy.reset()
                    self.start_worker(after_crash=False)
            elif (idle := self.idle_timeout()) is not None and idle <= 0:
                log.info("unloading idle model", role=self.role, model=self.model_name)
                self.unload()
        finally:
            self.queue.release()

    def respawn(self, control: Respawn) -> None:
        """A fresh worker after a crash, or (``control.model``) one serving that model."""
        if control.model is not None:
            control.error = self.load(control.model)
            control.ok = control.error is None
        else:
            control.ok = self.has_live_worker() or self.start_worker(after_crash=True)

    def apply(self, control: Load | Unload | Restart | Recover | WorkerExited) -> None:
        """Lifecycle work asked for while nothing ran: load, unload, restart, recover (a
        lost call went to another replica), or a worker that died between calls."""
        if isinstance(control, Load):
            control.error = self.load(control.model)
            if control.error is None:
                self.default_model = control.model
        elif isinstance(control, Unload):
            self.unload()
        elif isinstance(control, Restart):
            self.graceful_restart(control)
        elif isinstance(control, Recover):
            control.wait(lambda: self.queue.closing)
            if not self.has_live_worker() and self.state not in _NO_RECOVERY:
                self.start_worker(after_crash=True)
        else:
            self.on_idle_exit(control.worker)

    def load(self, name: str) -> ModelError | None:
        """Serve model ``name``: replace the worker, or start one if there is none. If it
        cannot load, the model that served before comes back and the reason is returned
        (and answered at once for ``failed_cooldown_s``: no caller waits on a doomed load)."""
        broken = self.broken.error(name)
        if broken is not None:
            return broken
        previous = self.model_name if self.worker is not None else None
        self.unload()
        self.model_name = name
        self._begin_load(RoleState.STARTING)
        try:
            self.worker = self._spawn_once()
        except Exception as exc:  # StartFailed, or EMFILE and the like
            error = self.broken.record(name, exc, self.config.failed_cooldown_s)
            if previous is None:
                self.model_name, self.state = self.default_model, RoleState.UNLOADED
            else:
                self.model_name = previous
                self.start_worker(after_crash=False)
            return error
        self.broken.loaded(name)
        self.state, self.failed_reason = RoleState.READY, ""
        self.last_used = time.monotonic()
        return None

    def unload(self) -> None:
        """Stop the worker (its memory is freed); the next call loads a model again."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop(self.config.cancel_grace_s)
        self.state = RoleState.UNLOADED

    # ------------------------------------------------------------------ go away

    def retire(self, worker: WorkerHandle, lost: Lost) -> str:
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

    def on_idle_exit(self, worker: WorkerHandle) -> None:
        """A worker died between calls: restart it now, so no caller pays for it."""
        if worker is not self.worker or self.queue.closing or not self.state.serving:
            return
        self.retire(worker, Lost("died while idle"))
        self.start_worker(after_crash=True)

    def graceful_restart(self, control: Restart) -> None:
        """Drain, stop the worker (and the spare), start anew, maybe with a new config."""
        if control.config is not None:
            self.config = control.config
            self.policy = RestartPolicy(control.config)
            self.queue.size = control.config.queue_size
            self.default_model = catalog.default_name(control.config)
            if self.model_name not in catalog.names(control.config):
                self.model_name = self.default_model
            self.broken.clear()
        else:
            self.policy.reset()
        self.state = RoleState.DRAINING
        if self.worker is not None:
            self.worker.stop(self.config.cancel_grace_s)
        self.standby = renewed(
            self.standby, self.config.standby, self.config.cancel_grace_s, self.start_standby
        )
        self.start_worker(after_crash=False)

    def fail(self, reason: str, log_tail: str) -> None:
        """The role is failed: open the circuit and answer every queued call."""
        self.state, self.failed_reason, self.failed_log_tail = RoleState.FAILED, reason, log_tail
        self.policy.open_circuit()
        log.error("role failed", role=self.role, reason=reason)
        for call in self.queue.take_calls():
            self.stats.failed()
            call.fail(self.unavailable())

    def shut_down(self) -> None:
        """Stop the worker and the spare; the role is stopped."""
        if self.worker is not None:
            self.worker.stop(self.config.cancel_grace_s)
        if self.standby is not None:
            self.standby.close()
        self.state = RoleState.STOPPED
