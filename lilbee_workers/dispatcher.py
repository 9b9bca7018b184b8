"""One role's dispatcher: a bounded queue of calls, the role's worker process, and the
thread that restarts it when it dies or hangs (gunicorn's arbiter, per role).

One call holds the role at a time. A non-streaming call that finds the role idle runs
its pipe I/O in the caller's own thread (no thread hand-offs on the hot path); streamed
and queued calls are run by the dispatcher thread. Either way, every worker is
*started* on the dispatcher thread, which lives as long as the supervisor: Linux's
parent-death signal follows the thread that forked, not the process.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog

from lilbee_workers import recovery
from lilbee_workers.calls import Call
from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import (
    ConfigError,
    InvalidRequest,
    Overloaded,
    ProtocolError,
    WorkerError,
    WorkerUnavailable,
)
from lilbee_workers.logfile import MAX_LOG_BYTES, role_log_path
from lilbee_workers.process import WorkerProcess
from lilbee_workers.recovery import RestartPolicy, StartFailed
from lilbee_workers.transport.frames import (
    FINAL_REPLIES,
    ChatChunk,
    ErrorFrame,
    Request,
    RoleStatus,
)

log = structlog.get_logger("lilbee_workers.dispatcher")

_request_ids = itertools.count(1)
_TICK_S = 0.1  # how often a busy dispatcher re-checks cancel and deadlines


@dataclass
class _Restart:
    config: RoleConfig | None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _WorkerExited:
    worker: WorkerProcess


@dataclass
class _Respawn:
    """A call holding the role lost its worker and needs a fresh one."""

    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


class _Close:
    pass


_Control = _Restart | _WorkerExited | _Close | _Respawn

_LIFECYCLE = object()
"""Holds the role while the dispatcher starts, restarts or stops its worker, so no call
runs on a worker that is being replaced."""


class RoleDispatcher:
    """Owns one role: its queue, its worker process, its recovery and its counters."""

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
        self.state = "stopped"
        self.worker: WorkerProcess | None = None
        self.generation = 0
        self.model_path = ""
        self.failed_reason = ""
        self.failed_log_tail = ""
        self.last_exit = ""
        self.restarts = 0
        self.served = 0
        self.errors = 0
        self.retried = 0
        self.retried_ok = 0
        self.internal_errors = 0
        self.latencies_ms: deque[float] = deque(maxlen=1024)
        self.started = threading.Event()
        self._calls: deque[Call] = deque()
        self._controls: deque[_Control] = deque()
        self._cond = threading.Condition()
        self._closing = False
        # What holds the role: the call running on the worker, or _LIFECYCLE. Held from
        # the start so that no call runs before the first worker is up.
        self._holder: object | None = _LIFECYCLE
        self._room_waiters = 0  # callers waiting for room in a full queue
        self._thread = threading.Thread(target=self._run, name=f"dispatch-{role}", daemon=True)

    # ================================================================== caller side

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: Request, block_s: float = 0.0, timeout: float | None = None) -> Call:
        """Queue a call for the dispatcher thread. A full queue answers ``Overloaded`` at
        once, or after waiting up to ``block_s`` for room; a failed role answers
        ``WorkerUnavailable``."""
        call = Call(self.role, request, timeout)
        with self._cond:
            self._admit(block_s)
            self._calls.append(call)
            self._cond.notify_all()
        return call

    def run_now(self, request: Request, block_s: float = 0.0, timeout: float | None = None) -> Call:
        """Run a call to its final frame. When the role is idle and the caller set no
        timeout, the caller's thread does the pipe I/O itself; otherwise the call queues
        like ``submit`` (so a caller with a timeout gets ``WorkerTimeout`` at its own
        deadline, while the dispatcher thread winds the worker down). Returns the call."""
        call = Call(self.role, request, timeout)
        with self._cond:
            self._admit(block_s)
            inline = (
                timeout is None and self._holder is None and not self._calls and not self._controls
            )
            if inline:
                self._holder = call
            else:
                self._calls.append(call)
                self._cond.notify_all()
        if inline:
            self._serve(call)
        return call

    def _admit(self, block_s: float) -> None:
        """Under the lock: refuse a call when closing, failed or full."""
        deadline = time.monotonic() + block_s
        while True:
            if self._closing:
                raise WorkerUnavailable(f"{self.role} is shutting down", role=self.role)
            if self.state == "failed" and self.policy.cooling_down():
                raise self._unavailable()
            if len(self._calls) < self.config.queue_size:
                return
            if self._drop_cancelled():
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Overloaded(
                    f"{self.role} queue is full ({self.config.queue_size} calls waiting)",
                    role=self.role,
                )
            self._room_waiters += 1
            try:
                self._cond.wait(remaining)
            finally:
                self._room_waiters -= 1

    def _drop_cancelled(self) -> bool:
        """Under the lock: answer and remove queued calls whose callers gave up (so they
        no longer take queue room). True if any were removed."""
        cancelled = [call for call in self._calls if call.cancelled]
        for call in cancelled:
            self._calls.remove(call)
            call.fail(call.cancelled_error())
        return bool(cancelled)

    def restart(self, config: RoleConfig | None = None) -> threading.Event:
        """Graceful restart after the call in flight (optionally with a new config);
        clears a failed state. The event is set once the role is ready or failed."""
        control = _Restart(config)
        self._post(control)
        return control.done

    def close(self) -> None:
        """Refuse new calls, answer queued ones, stop the worker after the call in flight."""
        with self._cond:
            self._closing = True
        self._post(_Close())

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        if self._thread.is_alive():
            worker = self.worker
            if worker is not None:
                worker.kill("supervisor closing")
            self._thread.join(10)
        return not self._thread.is_alive()

    def status(self) -> RoleStatus:
        """A snapshot, safe from any thread (the queue and counters are read under the lock)."""
        with self._cond:
            latencies = sorted(self.latencies_ms)
            queued = sum(not call.cancelled for call in self._calls)
            in_flight = 1 if isinstance(self._holder, Call) else 0
        worker = self.worker
        pong = worker.last_pong if worker is not None else None
        ready = worker.ready if worker is not None else None
        alive = worker is not None and self.state in ("ready", "busy")
        return RoleStatus(
            role=self.role,
            state=self.state,
            pid=worker.pid if alive and worker is not None else None,
            model=self.model_path or self.config.model,
            uptime_s=round(worker.uptime(), 3) if alive and worker is not None else 0.0,
            restarts=self.restarts,
            last_exit=self.failed_reason if self.state == "failed" else self.last_exit,
            in_flight=in_flight,
            queued=queued,
            served=self.served,
            retried=self.retried,
            retried_ok=self.retried_ok,
            errors=self.errors,
            p50_ms=_percentile(latencies, 0.50),
            p99_ms=_percentile(latencies, 0.99),
            rss_bytes=pong.rss_bytes if pong is not None and alive else 0,
            log_path=str(self.log_path),
            chat_template=ready.chat_template if ready is not None else None,
        )

    def _post(self, control: _Control) -> None:
        with self._cond:
            self._controls.append(control)
            self._cond.notify_all()

    def _unavailable(self) -> WorkerUnavailable:
        left = max(0.0, self.policy.failed_until - time.monotonic())
        return WorkerUnavailable(
            f"{self.role} is failed: {self.failed_reason} "
            f"(next try in {left:.0f}s, or run `lilbee-workers restart {self.role}`)",
            role=self.role,
            log_path=str(self.log_path),
            log_tail=self.failed_log_tail,
        )

    # ================================================================== dispatcher thread

    def _run(self) -> None:
        try:
            self._start_worker(after_crash=False)
        finally:
            self.started.set()
            self._release()
        while True:
            item = self._next_item()
            try:
                if isinstance(item, _Close):
                    self._shut_down()
                    return
                self._handle(item)
            except Exception as exc:
                # Nothing may end this thread but close: log, count, answer what was
                # waiting on this step, and go on serving.
                self.internal_errors += 1
                log.exception("dispatcher step failed", role=self.role, step=type(item).__name__)
                if isinstance(item, Call) and not item.finished:
                    item.fail(WorkerError(f"{self.role}: internal error: {exc!r}", role=self.role))
                if isinstance(item, _Close):
                    return

    def _handle(self, item: _Control | Call) -> None:
        """One step of the dispatcher thread. Every waiter is released even if it fails."""
        if isinstance(item, _Respawn):  # asked by the call holding the role
            try:
                item.ok = self._has_live_worker() or self._start_worker(after_crash=True)
            finally:
                item.done.set()
        elif isinstance(item, _Restart):
            try:
                self._graceful_restart(item)
            finally:
                item.done.set()
                self._release()
        elif isinstance(item, _WorkerExited):
            try:
                self._on_idle_exit(item.worker)
            finally:
                self._release()
        elif isinstance(item, Call):
            self._serve(item)

    def healthy(self) -> bool:
        """The dispatcher thread runs, and the current worker (if any) is watched."""
        worker = self.worker
        return self._thread.is_alive() and (worker is None or worker.monitoring())

    def _release(self) -> None:
        """Free the role for the next call."""
        with self._cond:
            self._holder = None
            if self._calls or self._controls or self._room_waiters:
                self._cond.notify_all()

    def _has_live_worker(self) -> bool:
        worker = self.worker
        return worker is not None and self.state == "ready" and worker.alive()

    def _next_item(self) -> _Control | Call:
        """The next control (a respawn at once, others once no call holds the role),
        else the next queued call, which then holds the role."""
        with self._cond:
            while True:
                for control in self._controls:
                    if isinstance(control, _Respawn):  # its caller holds the role
                        self._controls.remove(control)
                        return control
                if self._controls and self._holder is None:
                    control = self._controls.popleft()
                    if not isinstance(control, _Close):
                        self._holder = _LIFECYCLE
                    return control
                if self._calls and self._holder is None and not self._controls:
                    call = self._calls.popleft()
                    self._holder = call
                    if self._room_waiters:
                        self._cond.notify_all()  # room in the queue
                    return call
                self._cond.wait()

    def _serve(self, call: Call) -> None:
        """Run a call that holds the role, then release the role."""
        started = time.monotonic()
        try:
            if call.cancelled:
                call.fail(call.cancelled_error())
            elif not self._ensure_worker():
                self.errors += 1
                call.fail(self._unavailable())
            else:
                self._run_call(call)
        finally:
            with self._cond:
                self.latencies_ms.append((time.monotonic() - started) * 1000.0)
            self._release()

    def _run_call(self, call: Call) -> None:
        attempt = 0
        while True:
            worker = self.worker
            assert worker is not None
            failure = self._attempt(worker, call)
            if failure is None:
                return
            self._retire(worker, failure)
            if self._closing:
                self.errors += 1
                call.fail(WorkerUnavailable(f"{self.role} is shutting down", role=self.role))
                return
            if call.cancelled:  # the caller is gone: nothing to retry for
                call.fail(call.cancelled_error())
                self._respawn()
                return
            if not recovery.should_retry(attempt, call.chunks_delivered):
                self.errors += 1
                call.fail(
                    recovery.crashed_error(
                        self.role,
                        attempt + 1,
                        failure,
                        call.chunks_delivered,
                        str(self.log_path),
                        worker.log_tail(),
                    )
                )
                self._respawn()
                return
            attempt += 1
            call.retried = True
            self.retried += 1
            log.warning("retrying call on a fresh worker", role=self.role, reason=failure)
            if not self._respawn():
                self.errors += 1
                call.fail(self._unavailable())
                return

    def _attempt(self, worker: WorkerProcess, call: Call) -> str | None:
        """Run the call once on ``worker``. None when the call got its answer (or its
        caller gave up); else why the worker failed under it."""
        attempt_id = next(_request_ids)
        request = msgspec.structs.replace(call.request, id=attempt_id)
        try:
            worker.data.send(request)
        except ProtocolError as exc:
            self.errors += 1
            call.fail(InvalidRequest(f"request too large: {exc.message}", role=self.role))
            return None
        except (OSError, ValueError):
            worker.join(2)
            return worker.exit_description()
        call.bind(worker.health, attempt_id)
        self.state = "busy"
        deadline = time.monotonic() + self.config.request_timeout_s
        cancel_deadline: float | None = None
        try:
            while True:
                now = time.monotonic()
                if call.expires_at is not None and now >= call.expires_at:
                    call.time_out()  # the caller's own timeout: cancel, answer WorkerTimeout
                if cancel_deadline is None and call.cancelled:
                    cancel_deadline = now + self.config.cancel_grace_s
                if cancel_deadline is not None and now >= cancel_deadline:
                    worker.kill(f"ignored cancel for {self.config.cancel_grace_s:g}s")
                    call.fail(call.cancelled_error())
                    worker.join(5)
                    # Killed because its caller gave up, not because it failed: no
                    # count toward the circuit, or timeouts would fail the role for all.
                    self._retire(worker, worker.exit_description(), crashed=False)
                    self._respawn()
                    return None
                if now >= deadline:
                    worker.kill(f"overran the {self.config.request_timeout_s:g}s request deadline")
                    worker.join(5)
                    return worker.exit_description()
                readable, dead = worker.wait_data(min(deadline - now, _TICK_S))
                if readable:
                    try:
                        frame = worker.data.recv()
                    except (EOFError, OSError):
                        worker.join(5)
                        return worker.exit_description()
                    except ProtocolError as exc:
                        worker.kill(f"sent an undecodable frame ({exc.message})")
                        worker.join(5)
                        return worker.exit_description()
                    if getattr(frame, "id", None) != attempt_id:
                        log.debug("dropped stale frame", role=self.role, frame=type(frame).__name__)
                        continue
                    if isinstance(frame, ChatChunk):
                        call.deliver_chunk(frame)
                        continue
                    if isinstance(frame, FINAL_REPLIES):
                        if isinstance(frame, ErrorFrame):
                            self.errors += 1
                        else:
                            self.served += 1
                            if call.retried:
                                self.retried_ok += 1
                        call.finish(frame)
                        return None
                elif dead:
                    worker.join(5)
                    return worker.exit_description()
        finally:
            call.unbind()
            if self.state == "busy":
                self.state = "ready"

    # ------------------------------------------------------------------ lifecycle

    def _ensure_worker(self) -> bool:
        worker = self.worker
        if worker is not None and self.state in ("ready", "busy"):
            return True  # a dead one is seen by the call's own wait, and retried
        if self.state == "failed" and self.policy.cooling_down():
            return False
        if self.state == "failed":
            self.policy.reset()  # the cool-down is over: a fresh series of tries
        return self._respawn()

    def _respawn(self) -> bool:
        """A fresh worker after a crash, started on the dispatcher thread (whichever
        thread is asking). False when the role is failed or closing."""
        if threading.current_thread() is self._thread:
            return self._start_worker(after_crash=True)
        control = _Respawn()
        self._post(control)
        control.done.wait()
        return control.ok

    def _start_worker(self, after_crash: bool) -> bool:
        """Bring a fresh worker up (with backoff); False when the role is failed."""
        if self._closing:
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
            self.state = "restarting"
            self._sleep(self.policy.restart_delay())
        else:
            self.state = "starting"
        try:
            self.worker = self.policy.bring_up(self._spawn_once, sleep=self._sleep)
        except StartFailed as exc:
            if not self._closing:
                self._fail(exc.message, exc.log_tail)
            return False
        except ConfigError as exc:
            self._fail(str(exc), "")
            return False
        except Exception as exc:  # EMFILE, ENOMEM, a log dir gone: say so, do not die
            log.exception("worker start failed", role=self.role)
            self._fail(f"could not start a worker: {type(exc).__name__}: {exc}", "")
            return False
        self.state = "ready"
        self.failed_reason = ""
        return True

    def _spawn_once(self) -> WorkerProcess:
        if self._closing:
            raise StartFailed(f"{self.role} is shutting down", crashed=False)
        self.model_path = self.config.resolved_model()
        if not Path(self.model_path).is_file():
            raise StartFailed(f"model file not found: {self.model_path}", crashed=False)
        self.generation += 1
        worker = WorkerProcess(
            self.role,
            self.config,
            self.model_path,
            self.log_path,
            self.generation,
            self.max_frame_bytes,
            on_exit=lambda gone: self._post(_WorkerExited(gone)),
            log_max_bytes=self.log_max_bytes,
        )
        try:
            worker.start(abandon=lambda: self._closing)
        except StartFailed as exc:
            self.last_exit = exc.message
            log.error("worker failed to start", role=self.role, reason=exc.message)
            raise
        return worker

    def _retire(self, worker: WorkerProcess, reason: str, crashed: bool = True) -> None:
        """Account for a worker that died or was killed under a call (``crashed``:
        it failed on its own, which counts toward the circuit breaker)."""
        if not worker.alive():
            worker.join(1)
        worker.close_data()
        self.restarts += 1
        if crashed:
            self.policy.record_crash()
        self.last_exit = reason
        self.state = "crashed"
        log.warning("worker lost", role=self.role, reason=reason)

    def _on_idle_exit(self, worker: WorkerProcess) -> None:
        """A worker died between calls: restart it now, so no caller pays for it."""
        if worker is not self.worker or self._closing or self.state not in ("ready", "busy"):
            return
        self._retire(worker, worker.exit_description())
        self._start_worker(after_crash=True)

    def _graceful_restart(self, control: _Restart) -> None:
        if control.config is not None:
            self.config = control.config
            self.policy = RestartPolicy(control.config)
        else:
            self.policy.reset()
        self.state = "draining"
        if self.worker is not None:
            self.worker.stop(self.config.cancel_grace_s)
        self._start_worker(after_crash=False)
        control.done.set()

    def _fail(self, reason: str, log_tail: str) -> None:
        self.state = "failed"
        self.failed_reason = reason
        self.failed_log_tail = log_tail
        self.policy.open_circuit()
        log.error("role failed", role=self.role, reason=reason)
        with self._cond:
            waiting = list(self._calls)
            self._calls.clear()
            self._cond.notify_all()
        for call in waiting:
            self.errors += 1
            call.fail(self._unavailable())

    def _shut_down(self) -> None:
        with self._cond:
            waiting = list(self._calls)
            self._calls.clear()
            controls = list(self._controls)
            self._controls.clear()
        for call in waiting:
            call.fail(WorkerUnavailable(f"{self.role} is shutting down", role=self.role))
        for control in controls:
            if isinstance(control, (_Restart, _Respawn)):
                control.done.set()
        if self.worker is not None:
            self.worker.stop(self.config.cancel_grace_s)
        self.state = "stopped"

    def _sleep(self, seconds: float) -> None:
        """Back off, but wake for close."""
        if seconds <= 0:
            return
        with self._cond:
            self._cond.wait_for(lambda: self._closing, timeout=seconds)


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return round(sorted_values[index], 3)
