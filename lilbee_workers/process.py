"""One worker process, one generation: spawn, wait for READY, watch its health, stop it.

The health monitor thread pings the worker's heartbeat thread; a missed deadline means
the process is stopped or wedged, so the monitor kills it and records why. Death itself
is seen at once through the process sentinel by whoever waits on it.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import msgspec
import structlog

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import ProtocolError
from lilbee_workers.logfile import rotate_if_large, tail_lines
from lilbee_workers.recovery import StartFailed
from lilbee_workers.transport.channel import PipeChannel
from lilbee_workers.transport.frames import (
    LoadFailed,
    LogRecord,
    Ping,
    Pong,
    Ready,
    Shutdown,
    ShutdownAck,
)
from lilbee_workers.worker import worker_main

_spawn = multiprocessing.get_context("spawn")
log = structlog.get_logger("lilbee_workers.process")


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
    ) -> None:
        self.role = role
        self.config = config
        self.model_path = model_path
        self.log_path = log_path
        self.generation = generation
        self.max_frame_bytes = max_frame_bytes
        self.on_exit = on_exit
        self.ready: Ready | None = None
        self.last_pong: Pong | None = None
        self.kill_reason: str | None = None
        self.started_at = time.monotonic()
        self._ack = threading.Event()
        self._stopping = False
        self._process: Any = None
        self._pid = 0
        self._sentinel = -1
        self._exitcode: int | None = None
        # Set by the monitor thread, the only thread that reaps the process, once the
        # exit code is known and the Process (and its spawn pipes) is closed.
        self._exited = threading.Event()
        self._reap_lock = threading.Lock()

    # ------------------------------------------------------------------ start

    def start(self) -> Ready:
        """Spawn the worker and wait for READY; ``StartFailed`` if it never comes."""
        rotate_if_large(self.log_path)
        parent_data, child_data = _spawn.Pipe()
        parent_health, child_health = _spawn.Pipe()
        self._process = _spawn.Process(
            target=worker_main,
            name=f"lilbee-workers-{self.role}",
            args=(
                self.role,
                msgspec.msgpack.encode(self.config),
                self.model_path,
                str(self.log_path),
                child_data,
                child_health,
                os.getpid(),
                self.generation,
                self.max_frame_bytes,
            ),
            daemon=True,
        )
        self._process.start()
        self._pid = int(self._process.pid)
        self._sentinel = int(self._process.sentinel)
        child_data.close()
        child_health.close()
        self.data = PipeChannel(parent_data, self.max_frame_bytes)
        self.health = PipeChannel(parent_health, self.max_frame_bytes)
        # One poller for the data pipe and the death sentinel, reused by every call
        # (only the thread holding the role waits on it).
        self._poller = select.poll()
        self._poller.register(parent_data.fileno(), select.POLLIN)
        self._poller.register(self.sentinel, select.POLLIN)
        self._data_fd = parent_data.fileno()
        self.started_at = time.monotonic()
        log.info("worker spawned", role=self.role, pid=self.pid, generation=self.generation)
        threading.Thread(
            target=self._monitor, name=f"health-{self.role}-{self.pid}", daemon=True
        ).start()
        self.ready = self._await_ready()
        return self.ready

    def _await_ready(self) -> Ready:
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill(f"did not load within {self.config.start_timeout_s}s")
                self.join(5)
                raise StartFailed(self.exit_description(), crashed=True, log_tail=self.log_tail())
            ready = wait([self.data.conn, self.sentinel], timeout=remaining)
            if self.data.conn in ready:
                try:
                    frame = self.data.recv()
                except (EOFError, OSError, ProtocolError):
                    continue  # the sentinel tells what happened
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
        interval = self.config.heartbeat_interval_s
        timeout = self.config.heartbeat_timeout_s
        seq = 0
        awaiting_since: float | None = None
        next_ping = time.monotonic() + interval
        watched: list[Any] = [self.health.conn, self.sentinel]
        while True:
            now = time.monotonic()
            until = (awaiting_since + timeout) if awaiting_since is not None else next_ping
            ready = wait(watched, timeout=min(max(0.0, until - now), interval))
            now = time.monotonic()
            if self.health.conn in ready:
                try:
                    frame = self.health.recv()
                except (EOFError, OSError):
                    watched = [self.sentinel]
                    continue
                except ProtocolError as exc:
                    log.warning("bad health frame", role=self.role, error=exc.message)
                    continue
                if isinstance(frame, Pong):
                    if frame.seq == seq:
                        awaiting_since = None
                        next_ping = now + interval
                    self.last_pong = frame
                elif isinstance(frame, LogRecord):
                    log.log(
                        frame.level,
                        frame.message,
                        role=self.role,
                        pid=self.pid,
                        source=frame.logger,
                    )
                elif isinstance(frame, ShutdownAck):
                    self._ack.set()
                continue
            if self.sentinel in ready:
                break
            if self._stopping:
                continue
            if awaiting_since is not None and now - awaiting_since >= timeout:
                self.kill(f"hung: no heartbeat reply within {timeout:g}s")
                awaiting_since = None
                next_ping = float("inf")
            elif awaiting_since is None and now >= next_ping and self.ready is not None:
                # (No pings while loading: imports and metadata parsing may hold the
                # GIL for seconds; start_timeout_s bounds the load instead.)
                seq += 1
                try:
                    self.health.send(Ping(seq=seq))
                except (OSError, ValueError):
                    watched = [self.sentinel]
                    continue
                awaiting_since = now
        self._reap()
        self.health.close()  # this thread is the health pipe's only reader
        log.info("worker exited", role=self.role, pid=self.pid, reason=self.exit_description())
        self.on_exit(self)

    def wait_data(self, timeout: float) -> tuple[bool, bool]:
        """Wait up to ``timeout`` s: (data pipe readable, process gone)."""
        events = self._poller.poll(max(0, math.ceil(timeout * 1000)))
        readable = dead = False
        for fd, _ in events:
            if fd == self._data_fd:
                readable = True
            else:
                dead = True
        return readable, dead

    # ------------------------------------------------------------------ facts

    def _reap(self) -> None:
        """Collect the exit code and close the Process now (its spawn pipes would
        otherwise stay open until garbage collection)."""
        self._process.join(5)
        with self._reap_lock:
            code = self._process.exitcode
            if code is not None:
                self._exitcode = int(code)
                self._process.close()
            self._exited.set()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def sentinel(self) -> int:
        return self._sentinel

    @property
    def exitcode(self) -> int | None:
        return self._exitcode

    def alive(self) -> bool:
        if self._process is None:
            return False
        with self._reap_lock:
            if self._exited.is_set():
                return False
            readable, _, _ = select.select([self._sentinel], [], [], 0)
            return not readable

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

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
            if self._process is None or self._exited.is_set():
                return  # reaped: the pid may already belong to another process
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def join(self, timeout: float) -> None:
        """Wait until the monitor thread has reaped the process and knows its exit code."""
        self._exited.wait(timeout)

    def stop(self, grace_s: float) -> None:
        """Graceful stop: SHUTDOWN on the health pipe, close the data pipe, wait, kill."""
        if self._process is None:
            return
        self._stopping = True
        if self.alive():
            try:
                self.health.send(Shutdown())
                self._ack.wait(min(grace_s, 2.0))
            except (OSError, ValueError):
                pass
        self.data.close()
        self.join(grace_s)
        if self.alive():
            self.kill(f"did not stop within {grace_s:g}s")
            self.join(5)

    def close_data(self) -> None:
        """Close the data pipe (the monitor thread closes the health pipe when it ends)."""
        try:
            self.data.close()
        except OSError:
            pass
