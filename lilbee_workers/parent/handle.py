"""What the supervisor needs of one worker, as a protocol.

``WorkerProcess`` is the real thing; the unit tests drive the dispatcher with a fake
that speaks the same frames over socket pairs, so the recovery rules can be checked
without a model or a subprocess.
"""

from __future__ import annotations

import math
import select
from collections.abc import Callable
from typing import Any, Protocol

from lilbee_workers.config import RoleConfig
from lilbee_workers.transport.channel import PipeChannel
from lilbee_workers.transport.frames import DataReply, HealthReport, Ready


class WorkerHandle(Protocol):
    """One worker generation: started once, used by the holder of its role, stopped once."""

    role: str
    generation: int
    model_path: str
    ready: Ready | None
    on_progress: Callable[[float], None]
    """Told how far the model load has come (0.0 to 1.0); set before ``start``."""
    data: PipeChannel[DataReply]
    health: PipeChannel[HealthReport]
    kill_reason: str | None
    """Why the supervisor killed it (hang, overrun, stall, cancel ignored); None if not."""

    @property
    def pid(self) -> int: ...

    def start(self, abandon: Callable[[], bool] = ...) -> Ready:
        """Start and wait for READY; ``StartFailed`` if it never comes."""
        ...

    def alive(self) -> bool: ...

    def monitoring(self) -> bool:
        """Whether its health watch still runs."""
        ...

    def wait_data(self, timeout: float, wake_fd: int = -1) -> tuple[bool, bool]:
        """(data pipe readable, process gone) within ``timeout`` s; returns early, with
        neither, when ``wake_fd`` (if given) becomes readable."""
        ...

    def vitals(self) -> dict[str, Any]: ...

    def log_tail(self, lines: int = 20) -> str: ...

    def exit_description(self) -> str: ...

    def kill(self, reason: str) -> None: ...

    def join(self, timeout: float) -> None: ...

    def stop(self, grace_s: float) -> None: ...

    def close_data(self) -> None: ...


class WorkerFactory(Protocol):
    """Makes a worker for a role (not started yet), with the role's current config."""

    def __call__(
        self,
        config: RoleConfig,
        model_path: str,
        generation: int,
        on_exit: Callable[[WorkerHandle], None],
        warm_up: bool,
    ) -> WorkerHandle: ...


def poll_data(
    poller: select.poll, data_fd: int, timeout: float, wake_fd: int = -1
) -> tuple[bool, bool]:
    """``wait_data`` over a poller that watches the data pipe and a death sentinel:
    (data readable, the worker gone), or neither once ``wake_fd`` is readable."""
    if wake_fd >= 0:
        poller.register(wake_fd, select.POLLIN)
    try:
        events = poller.poll(max(0, math.ceil(timeout * 1000)))
    finally:
        if wake_fd >= 0:
            poller.unregister(wake_fd)
    readable = any(fd == data_fd for fd, _ in events)
    dead = any(fd not in (data_fd, wake_fd) for fd, _ in events)
    return readable, dead
