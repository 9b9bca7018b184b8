"""One worker process, one generation: start it, wait for READY, watch its health, stop it.

A worker is started as ``python -m lilbee_workers.child`` with its two socket pairs
passed as file descriptors, not through ``multiprocessing``: the parent's ``__main__``
is never re-imported, so a script without an ``if __name__ == "__main__"`` guard, or a
notebook, can run a supervisor. Death is seen at once through a pidfd (the process's
own file descriptor, readable when it exits, and a race-free way to signal it).

The health monitor thread pings the worker's heartbeat thread; a missed deadline means
the process is stopped or wedged, so the monitor kills it and records why.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import msgspec
import structlog

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import ProtocolError
from lilbee_workers.logs import rotate_if_large, tail_lines
from lilbee_workers.parent.handle import poll_data
from lilbee_workers.parent.launch import launch_worker
from lilbee_workers.parent.monitor import HealthMonitor
from lilbee_workers.parent.policy import StartFailed
from lilbee_workers.transport import codec
from lilbee_workers.transport.channel import PipeChannel
from lilbee_workers.transport.frames import LoadFailed, Pong, Ready, Shutdown, WorkerBoot

log = structlog.get_logger("lilbee_workers.process")

_START_POLL_S = 0.2  # how often a loading worker's wait re-checks for shutdown


class WorkerProcess:
    """A handle on one running worker and its two pipes."""

    def __init__(
        self,
        role: str,
        config: RoleConfig,
        model_path: str,
        log_path: Path,
        generation: int,
        max_frame_bytes: int,
        on_exit: Callable[[WorkerProcess], None] = lambda worker: None,
        log_max_bytes: int = 10 * 1024 * 1024,
        warm_up: bool = False,
        on_progress: Callable[[float], None] = lambda fraction: None,
    ) -> None:
        self.role = role
        self.config = config
        self.model_path = model_path
        self.log_path = log_path
        self.generation = generation
        self.max_frame_bytes = max_frame_bytes
        self.log_max_bytes = log_max_bytes
        self.warm_up = warm_up
        self.on_exit = on_exit
        self.on_progress = on_progress  # the model load's progress, from the monitor thread
        self.ready: Ready | None = None
        self.monitor: HealthMonitor | None = None
        self.kill_reason: str | None = None
        self.started_at = time.monotonic()
        self._stopping = False
        self._popen: subprocess.Popen[bytes] | None = None
        self._pid = 0
        self._pidfd = -1
        self._exitcode: int | None = None
        self._monitor_thread: threading.Thread | None = None
        # Set by the monitor thread, the only thread that reaps the process, once the
        # exit code is known and the pidfd is closed.
        self._exited = threading.Event()
        self._released = False  # the owner called close_data: nobody waits on the pidfd
        self._reap_lock = threading.Lock()

    # ------------------------------------------------------------------ start

    def start(self, abandon: Callable[[], bool] = lambda: False) -> Ready:
        """Start the worker and wait for READY; ``StartFailed`` if it never comes, at
        once when it dies while loading, or within a moment of ``abandon()`` turning
        true (the supervisor is closing)."""
        rotate_if_large(self.log_path, self.log_max_bytes)
        data, health = self._spawn()
        self.data = PipeChannel(data, codec.FROM_WORKER, self.max_frame_bytes)
        self.health = PipeChannel(health, codec.FROM_HEARTBEAT, self.max_frame_bytes)
        # One poller for the data pipe and the death sentinel, reused by every call
        # (only the thread holding the role waits on it).
        self._poller = select.poll()
        self._poller.register(self.data.conn.fileno(), select.POLLIN)
        self._poller.register(self._pidfd, select.POLLIN)
        self._data_fd = self.data.conn.fileno()
        self.started_at = time.monotonic()
        log.info("worker spawned", role=self.role, pid=self.pid, generation=self.generation)
        self.monitor = HealthMonitor(
            self.role,
            self.pid,
            self.health,
            self._pidfd,
            self.config,
            loaded=lambda: self.ready is not None,
            stopping=lambda: self._stopping,
            on_hang=self.kill,
            on_progress=lambda fraction: self.on_progress(fraction),
        )
        self._monitor_thread = threading.Thread(
            target=self._monitor, name=f"health-{self.role}-{self.pid}", daemon=True
        )
        self._monitor_thread.start()
        self._send_boot()
        try:
            self.ready = self._await_ready(abandon)
        except StartFailed:
            self.join(5)
            self.close_data()
            raise
        return self.ready

    def _spawn(self) -> tuple[Connection, Connection]:
        try:
            launched = launch_worker(self.role, self.log_path)
        except OSError as exc:
            raise StartFailed(f"cannot start a {self.role} worker: {exc}", crashed=False) from None
        self._popen, self._pidfd = launched.popen, launched.pidfd
        self._pid = launched.popen.pid
        return launched.data, launched.health

    def _send_boot(self) -> None:
        """The worker's first frame: what to load and how."""
        boot = WorkerBoot(
            role=self.role,
            config=msgspec.msgpack.encode(self.config),
            model_path=self.model_path,
            log_path=str(self.log_path),
            generation=self.generation,
            max_frame_bytes=self.max_frame_bytes,
            log_max_bytes=self.log_max_bytes,
            warm_up=self.warm_up,
        )
        try:
            self.data.send(boot)
        except (OSError, ValueError):
            pass  # it died already: the wait for READY says how

    def _await_ready(self, abandon: Callable[[], bool]) -> Ready:
        deadline = time.monotonic() + self.config.start_timeout_s
        watched: list[Any] = [self.data.conn, self.sentinel]
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill(f"did not load within {self.config.start_timeout_s:g}s")
                self.join(5)
                raise StartFailed(self.exit_description(), crashed=True, log_tail=self.log_tail())
            if abandon():
                self.kill("stopped while loading: the supervisor is closing")
                self.join(5)
                raise StartFailed(f"{self.role} is shutting down", crashed=False)
            ready = wait(watched, timeout=min(remaining, _START_POLL_S))
            if self.data.conn in ready:
                try:
                    frame = self.data.recv()
                except (EOFError, OSError, ProtocolError):
                    watched = [self.sentinel]  # it is going: the sentinel says how
                    continue
                if isinstance(frame, Ready):
                    return frame
                if isinstance(frame, LoadFailed):
                    self.join(5)
                    self.kill("load failed")
                    raise StartFailed(frame.message, crashed=False)
            elif self.sentinel in ready:
                self.join(5)
                raise StartFailed(
                    f"worker died while loading the model: {self.exit_description()}",
                    crashed=True,
                    log_tail=self.log_tail(),
                )

    # ------------------------------------------------------------------ health

    def _monitor(self) -> None:
        """The health thread: watch, then reap and report the exit. It never dies on an
        unexpected error: it logs it and kills the worker (a worker nobody watches
        for hangs must not keep serving), then still reaps it."""
        assert self.monitor is not None
        try:
            self.monitor.watch()
        except Exception as exc:
            log.exception("health monitor failed; killing the worker", role=self.role, pid=self.pid)
            self.kill(f"health monitor failed: {type(exc).__name__}: {exc}")
        try:
            self._reap()
            self.health.close()  # this thread is the health pipe's only reader
            log.info("worker exited", role=self.role, pid=self.pid, reason=self.exit_description())
        finally:
            self._exited.set()
            self.on_exit(self)

    def monitoring(self) -> bool:
        """Whether the health thread is running (or the process is already reaped)."""
        thread = self._monitor_thread
        return self._exited.is_set() or (thread is not None and thread.is_alive())

    def wait_data(self, timeout: float, wake_fd: int = -1) -> tuple[bool, bool]:
        """Wait up to ``timeout`` s: (data pipe readable, process gone)."""
        return poll_data(self._poller, self._data_fd, timeout, wake_fd)

    # ------------------------------------------------------------------ facts

    def _reap(self) -> None:
        """Collect the exit code (under the lock ``kill`` takes, so a kill never reaches
        a recycled pid). The pidfd stays open until the owner is done with this worker
        (``close_data``): other threads may still be waiting on it."""
        assert self._popen is not None
        try:
            code = self._popen.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        with self._reap_lock:
            if code is not None:
                self._exitcode = int(code)
            self._exited.set()
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        """Close the pidfd once both the process is reaped and its owner let go."""
        with self._reap_lock:
            if self._exited.is_set() and self._released and self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1

    @property
    def last_pong(self) -> Pong | None:
        """The latest heartbeat reply (in-flight id, RSS, served count)."""
        return self.monitor.last_pong if self.monitor is not None else None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def sentinel(self) -> int:
        """The pidfd: readable once the process has exited."""
        return self._pidfd

    @property
    def exitcode(self) -> int | None:
        return self._exitcode

    def alive(self) -> bool:
        if self._popen is None:
            return False
        with self._reap_lock:
            if self._exited.is_set():
                return False
            readable, _, _ = select.select([self._pidfd], [], [], 0)
            return not readable

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def vitals(self) -> dict[str, Any]:
        """The ``RoleStatus`` fields a live worker knows: pid, uptime, RSS."""
        pong = self.last_pong
        return {
            "pid": self.pid,
            "uptime_s": round(self.uptime(), 3),
            "rss_bytes": pong.rss_bytes if pong is not None else 0,
        }

    def log_tail(self, lines: int = 20) -> str:
        return tail_lines(self.log_path, lines)

    def exit_description(self) -> str:
        """Why the worker is gone, in words: the kill reason, signal or exit code."""
        code = self.exitcode
        if code is None:
            how = "still running"
        elif code < 0:
            try:
                how = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        elif code == 0:
            how = "exited with code 0"
        else:
            how = f"exited with code {code}"
        who = f"{self.role} worker pid {self.pid}"
        if self.kill_reason:
            return f"{who} {self.kill_reason}; {how}"
        return f"{who} {how}"

    # ------------------------------------------------------------------ stop

    def kill(self, reason: str) -> None:
        """SIGKILL the worker (first reason wins)."""
        if self.kill_reason is None:
            self.kill_reason = reason
        with self._reap_lock:
            if self._popen is None or self._exited.is_set():
                return  # reaped
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def join(self, timeout: float) -> None:
        """Wait until the monitor thread has reaped the process and knows its exit code."""
        self._exited.wait(timeout)

    def stop(self, grace_s: float) -> None:
        """Graceful stop: SHUTDOWN on the health pipe, close the data pipe, wait, kill."""
        if self._popen is None:
            return
        self._stopping = True
        if self.alive():
            try:
                self.health.send(Shutdown())
                if self.monitor is not None:
                    self.monitor.shutdown_acked.wait(min(grace_s, 2.0))
            except (OSError, ValueError):
                pass
        self.data.close()
        self.join(grace_s)
        if self.alive():
            self.kill(f"did not stop within {grace_s:g}s")
            self.join(5)
        self.close_data()
        monitor = self._monitor_thread  # its "worker exited" line, before a shutdown ends
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(5)

    def close_data(self) -> None:
        """The owner is done with this worker: close the data pipe (the monitor thread
        closes the health pipe when it ends) and, once reaped, the pidfd."""
        try:
            self.data.close()
        except OSError:
            pass
        self._released = True
        self._close_pidfd()
