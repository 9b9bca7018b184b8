"""The worker's health pipe: a thread that answers pings, takes cancels and shutdown,
and carries the worker's Python log records and model load progress to the supervisor.

It runs beside inference (llama.cpp releases the GIL while it computes), so a long
call never starves liveness or shutdown.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Protocol

from lilbee_workers.child.state import RequestState
from lilbee_workers.errors import ProtocolError
from lilbee_workers.transport.channel import PipeChannel
from lilbee_workers.transport.frames import (
    Cancel,
    Frame,
    HealthCommand,
    LoadProgress,
    LogRecord,
    Ping,
    Pong,
    Shutdown,
    ShutdownAck,
)


class FrameSink(Protocol):
    """Where a worker's health frames go: its health pipe, or a Ray actor's outbox."""

    def send(self, frame: Frame) -> None: ...


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ForwardingHandler(logging.Handler):
    """Sends Python log records to the supervisor over the health pipe."""

    def __init__(self, health: FrameSink) -> None:
        super().__init__(logging.INFO)
        self.health = health

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.health.send(
                LogRecord(
                    level=record.levelno,
                    logger=record.name,
                    message=self.format(record),
                    created=record.created,
                )
            )
        except Exception:  # a log line must never take the worker down
            pass


class ProgressReporter:
    """Sends the model load's progress to the supervisor: a frame each time the load has
    come ``step`` further, and one at 1.0 (about a hundred frames a load, however many
    times llama.cpp reports). Frames only ever go up."""

    def __init__(self, health: FrameSink, step: float = 0.01) -> None:
        self.health = health
        self.step = step
        self.sent = -1.0

    def __call__(self, fraction: float) -> None:
        if not math.isfinite(fraction):
            return
        fraction = min(max(fraction, 0.0), 1.0)
        done = fraction >= 1.0 > self.sent
        if not done and fraction < self.sent + self.step:
            return
        self.sent = fraction
        try:
            self.health.send(LoadProgress(fraction=fraction))
        except Exception:  # a supervisor gone mid-load: the load's own end says so
            pass


def pong(seq: int, state: RequestState) -> Pong:
    """The reply to ping ``seq``: what runs, how far its work has come, memory, served."""
    return Pong(
        seq=seq,
        in_flight=state.in_flight,
        rss_bytes=rss_bytes(),
        served=state.served,
        progress=state.progress(),
    )


def serve_health(
    health: PipeChannel[HealthCommand], state: RequestState, shutdown_grace_s: float
) -> None:
    """PING -> PONG, CANCEL, SHUTDOWN -> ACK, until the supervisor goes away; then exit
    the process (nobody is left to serve)."""
    while True:
        try:
            frame = health.recv()
        except (EOFError, OSError):
            os._exit(0)
        except ProtocolError:
            continue
        if isinstance(frame, Ping):
            _send_or_exit(health, pong(frame.seq, state))
        elif isinstance(frame, Cancel):
            state.cancel_request(frame.id)
        elif isinstance(frame, Shutdown):
            state.cancel_current()
            _send_or_exit(health, ShutdownAck())
            # The supervisor now closes the data pipe and the serving loop ends; if it
            # is stuck inside llama.cpp, leave anyway after the grace period.
            timer = threading.Timer(shutdown_grace_s, os._exit, args=(0,))
            timer.daemon = True
            timer.start()


def start_heartbeat(
    health: PipeChannel[HealthCommand], state: RequestState, shutdown_grace_s: float
) -> None:
    threading.Thread(
        target=_guarded,
        args=(health, state, shutdown_grace_s),
        daemon=True,
        name="heartbeat",
    ).start()


def _guarded(
    health: PipeChannel[HealthCommand], state: RequestState, shutdown_grace_s: float
) -> None:
    """The heartbeat thread must not die quietly: a worker without one looks hung and
    is killed, so an unexpected error ends the process with the reason in its log."""
    try:
        serve_health(health, state, shutdown_grace_s)
    except BaseException as exc:
        logging.getLogger("lilbee_workers.child").critical("heartbeat thread failed: %r", exc)
        os._exit(70)


def _send_or_exit(channel: PipeChannel[HealthCommand], frame: Frame) -> None:
    try:
        channel.send(frame)
    except (OSError, ValueError):
        os._exit(0)
