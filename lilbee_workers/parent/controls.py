"""A role's lifecycle work, as the values its line carries beside calls: restart,
respawn, load, unload, recover, close, and a worker's exit. The dispatcher thread runs
them (``dispatcher``, ``lifecycle``); ``refuse`` answers one the role will never run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import WorkerError, WorkerUnavailable
from lilbee_workers.parent.calls import Call
from lilbee_workers.parent.handle import WorkerHandle


@dataclass
class Restart:
    """Graceful restart, optionally with a new config."""

    config: RoleConfig | None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Respawn:
    """A call holding the role needs a fresh worker: its own died, or (``model``) it
    wants another model. Served at once: its caller already holds the role."""

    model: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    error: WorkerError | None = None


@dataclass
class Load:
    """Make ``model`` the role's default and load it now."""

    model: str
    done: threading.Event = field(default_factory=threading.Event)
    error: WorkerError | None = None


@dataclass
class Unload:
    """Stop the role's worker to free its memory."""

    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Recover:
    """Calls lost with this worker were taken over by another replica: bring a fresh
    worker up before any call needs it, once those calls are done (a model load would
    take CPU from them), or after ``patience_s``."""

    calls: list[Call]
    patience_s: float = 3.0
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, closing: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.patience_s
        while not all(call.finished for call in self.calls) and not closing():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)


class Close:
    """Stop the role."""


@dataclass
class WorkerExited:
    """A worker's process ended (seen by its health monitor)."""

    worker: WorkerHandle


Control = Restart | Respawn | Load | Unload | Recover | Close | WorkerExited


def refuse(control: Control, role: str) -> None:
    """Release whoever waits on ``control``: the role is shutting down. A load or a
    respawn gets the reason, so that nobody reads a refused switch as done."""
    if isinstance(control, (Load, Respawn)):
        control.error = WorkerUnavailable(f"{role} is shutting down", role=role)
    if isinstance(control, Respawn):
        control.ok = False
    if not isinstance(control, (Close, WorkerExited)):
        control.done.set()
