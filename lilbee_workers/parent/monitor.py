"""The heartbeat watchdog: ping a worker's heartbeat thread on schedule, relay its log
records and model load progress, and report a hang through a callback: a missed
deadline (a stopped or GIL-wedged process), or a busy worker whose work has not
moved for ``stall_after_s`` (a decode wedged in C while Python answers pings).

It knows nothing of processes: the owner passes the health channel, the death
sentinel, and what to do on a hang (``process.WorkerProcess`` kills).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

import structlog

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import ProtocolError
from lilbee_workers.transport.channel import PipeChannel
from lilbee_workers.transport.frames import (
    HealthReport,
    LoadProgress,
    LogRecord,
    Ping,
    Pong,
    ShutdownAck,
)

log = structlog.get_logger("lilbee_workers.monitor")

_STANDARD_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


def standard_level(level: int) -> int:
    """The nearest standard logging level at or below ``level`` (structlog knows no
    others: a worker's custom level 25 must not break the monitor)."""
    return max((known for known in _STANDARD_LEVELS if known <= level), default=logging.DEBUG)


class StallWatch:
    """Tells a busy worker that computes from one that only answers pings.

    Each ``Pong`` carries the request in flight and the worker's work count (graph
    nodes computed). The same request at the same count for ``after_s`` is a stall.
    Idle, unmetered (count None) or a new request: the clock starts again."""

    def __init__(self, after_s: float | None) -> None:
        self.after_s = after_s or None  # 0 or None: off
        self._seen: tuple[int, int] | None = None
        self._since = 0.0

    def observe(self, pong: Pong, now: float) -> str | None:
        """The hang reason once the work has stood still too long, else None."""
        if self.after_s is None or not pong.in_flight or pong.progress is None:
            self._seen = None
            return None
        seen = (pong.in_flight, pong.progress)
        if seen != self._seen:
            self._seen, self._since = seen, now
            return None
        if now - self._since < self.after_s:
            return None
        return f"stalled: busy with no progress for {self.after_s:g}s (stall_after_s)"


class HealthMonitor:
    """Watches one worker over its health pipe until its sentinel fires."""

    def __init__(
        self,
        role: str,
        pid: int,
        health: PipeChannel[HealthReport],
        sentinel: int,
        config: RoleConfig,
        *,
        loaded: Callable[[], bool],
        stopping: Callable[[], bool],
        on_hang: Callable[[str], None],
        on_progress: Callable[[float], None] = lambda fraction: None,
    ) -> None:
        self.role = role
        self.pid = pid
        self.health = health
        self.sentinel = sentinel
        self.interval = config.heartbeat_interval_s
        self.timeout = config.heartbeat_timeout_s
        self.loaded = loaded
        self.stopping = stopping
        self.on_hang = on_hang
        self.on_progress = on_progress
        self.last_pong: Pong | None = None
        self.stall = StallWatch(config.stall_after_s)
        self.load_progress: float | None = None
        self.shutdown_acked = threading.Event()

    def watch(self) -> None:
        """Ping on schedule, read pongs and log records, report a missed deadline;
        return once the process is gone."""
        seq = 0
        awaiting_since: float | None = None
        next_ping = time.monotonic() + self.interval
        watched: list[Any] = [self.health.conn, self.sentinel]
        while True:
            now = time.monotonic()
            until = (awaiting_since + self.timeout) if awaiting_since is not None else next_ping
            ready = wait(watched, timeout=min(max(0.0, until - now), self.interval))
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
                        next_ping = now + self.interval
                    self.last_pong = frame
                    stalled = self.stall.observe(frame, now)
                    if stalled is not None and not self.stopping():
                        self.on_hang(stalled)  # killed: no more pings, as for a missed one
                        awaiting_since, next_ping = None, float("inf")
                elif isinstance(frame, LogRecord):
                    self.relay(frame)
                elif isinstance(frame, LoadProgress):
                    self.progressed(frame.fraction)
                elif isinstance(frame, ShutdownAck):
                    self.shutdown_acked.set()
                continue
            if self.sentinel in ready:
                return
            if self.stopping():
                continue
            if awaiting_since is not None and now - awaiting_since >= self.timeout:
                self.on_hang(f"hung: no heartbeat reply within {self.timeout:g}s")
                awaiting_since = None
                next_ping = float("inf")
            elif awaiting_since is None and now >= next_ping and self.loaded():
                # (No pings while loading: imports and metadata parsing may hold the
                # GIL for seconds; start_timeout_s bounds the load instead.)
                seq += 1
                try:
                    self.health.send(Ping(seq=seq))
                except (OSError, ValueError):
                    watched = [self.sentinel]
                    continue
                awaiting_since = now

    def progressed(self, fraction: float) -> None:
        """The worker's model load has come this far (0.0 to 1.0)."""
        self.load_progress = fraction
        try:
            self.on_progress(fraction)
        except Exception:  # the owner's bookkeeping must not stop the watch
            log.exception("load progress callback failed", role=self.role)

    def relay(self, record: LogRecord) -> None:
        """A worker's log record into the supervisor's log stream, tagged role and pid."""
        try:
            log.log(
                standard_level(record.level),
                record.message,
                role=self.role,
                pid=self.pid,
                source=record.logger,
            )
        except Exception:  # a log line that cannot be written must not stop the watch
            pass
