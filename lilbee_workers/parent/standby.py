"""Hot standby: one spare worker per role, loaded and waiting, so a crash costs the
time to hand over a pipe instead of an interpreter start plus a model load.

The spare is started by a thread of its own that lives as long as the role: Linux's
parent-death signal follows the thread that forked a child, so a short-lived thread
could not start it. The spare costs a second copy of the model in RAM.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from lilbee_workers.parent.handle import WorkerHandle
from lilbee_workers.parent.policy import StartFailed

log = structlog.get_logger("lilbee_workers.standby")

_CHECK_S = 0.5  # how often the standby thread looks at its spare
_IDLE_WAIT_S = 3.0  # how long a new spare waits for the role to be idle before loading
_RETRY_S = (1.0, 30.0)  # first and longest pause after a spare failed to load


class Standby:
    """Keeps one loaded spare for a role; ``take`` hands it over and loads the next."""

    def __init__(
        self,
        role: str,
        start_spare: Callable[[], WorkerHandle],
        closing: Callable[[], bool],
        grace_s: float,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.role = role
        self._start_spare = start_spare
        self._closing = closing
        self._busy = busy
        self._grace_s = grace_s
        self._lock = threading.Lock()
        self._spare: WorkerHandle | None = None
        self._wanted = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"standby-{role}", daemon=True)

    def start(self) -> None:
        self._wanted.set()
        self._thread.start()

    def take(self) -> WorkerHandle | None:
        """The loaded spare, if one is alive (a new one starts loading at once)."""
        with self._lock:
            spare, self._spare = self._spare, None
        self._wanted.set()
        if spare is not None and spare.alive():
            log.info("standby takes over", role=self.role, pid=spare.pid)
            return spare
        if spare is not None:
            spare.close_data()
        return None

    def pid(self) -> int | None:
        spare = self._spare
        return spare.pid if spare is not None and spare.alive() else None

    def alive(self) -> bool:
        return self._thread.is_alive() or self._closing()

    def close(self) -> None:
        """Stop the spare (the thread ends on its own once the role is closing)."""
        self._wanted.set()
        self._thread.join(self._grace_s + 5)
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.stop(self._grace_s)

    def _wait_until_idle(self) -> None:
        """Let the call in flight (often the one the old spare just took over) finish
        before loading: a model load would take CPU from it. Load anyway after a while,
        so a role that is never idle still gets its spare."""
        deadline = time.monotonic() + _IDLE_WAIT_S
        while self._busy() and time.monotonic() < deadline and not self._closing():
            time.sleep(0.02)

    def _run(self) -> None:
        pause = _RETRY_S[0]
        while not self._closing():
            self._wanted.wait(_CHECK_S)
            self._wanted.clear()
            spare = self._spare
            if self._closing() or (spare is not None and spare.alive()):
                continue
            self._wait_until_idle()
            try:
                fresh = self._start_spare()
            except StartFailed as exc:
                log.warning("standby failed to load", role=self.role, reason=exc.message)
                self._wanted.wait(pause)
                pause = min(pause * 2, _RETRY_S[1])
                continue
            except Exception:
                log.exception("standby thread step failed", role=self.role)
                self._wanted.wait(pause)
                continue
            pause = _RETRY_S[0]
            with self._lock:
                old, self._spare = self._spare, fresh
            if old is not None:
                old.close_data()
