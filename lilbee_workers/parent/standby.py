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
        self._stopped = False
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
        return self._thread.is_alive() or self._done()

    def close(self) -> None:
        """Stop the spare and the thread: once the role is closing, or for a reload that
        turns ``standby`` off. The thread stops the spare itself, gracefully, before it
        ends: the spare's parent-death signal follows the thread that started it, so
        stopping it after the thread ended would find it SIGKILLed (and log a crash)."""
        self._stopped = True
        self._wanted.set()
        self._thread.join(self._grace_s + 5)
        self._stop_spare()  # the thread never started, or did not end in time

    def _done(self) -> bool:
        return self._stopped or self._closing()

    def _stop_spare(self) -> None:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return
        log.info("stopping the standby worker", role=self.role, pid=spare.pid)
        try:
            spare.stop(self._grace_s)
        except Exception:  # never silent, never the end of whoever closes the role
            log.exception("standby worker stop failed", role=self.role, pid=spare.pid)

    def _wait_until_idle(self) -> None:
        """Let the call in flight (often the one the old spare just took over) finish
        before loading: a model load would take CPU from it. Load anyway after a while,
        so a role that is never idle still gets its spare."""
        deadline = time.monotonic() + _IDLE_WAIT_S
        while self._busy() and time.monotonic() < deadline and not self._done():
            time.sleep(0.02)

    def _run(self) -> None:
        try:
            self._keep_spare()
        finally:
            self._stop_spare()  # on this thread, while the spare's parent-death signal waits

    def _keep_spare(self) -> None:
        pause = _RETRY_S[0]
        while not self._done():
            self._wanted.wait(_CHECK_S)
            self._wanted.clear()
            spare = self._spare
            if self._done() or (spare is not None and spare.alive()):
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


def renewed(
    standby: Standby | None, wanted: bool, grace_s: float, start: Callable[[], Standby]
) -> Standby | None:
    """The role's standby after a restart with new settings: its spare was loaded with
    the old ones, so it loads anew; one a reload turned on starts, one turned off stops
    (a reload applies ``standby`` as it does every role setting)."""
    if standby is not None and not wanted:
        standby.close()
        return None
    spare = standby.take() if standby is not None else None
    if spare is not None:
        spare.stop(grace_s)
    return start() if standby is None and wanted else standby
