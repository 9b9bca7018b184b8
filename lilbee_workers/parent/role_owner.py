"""The one owner of a role's lifecycle: restarts, reloads, resizes, model loads and
unloads run one at a time, each on the owner's thread, and each returns an ``Outcome``.

Without an owner, two overlapping restarts of a replicated role rolled through the
replicas side by side and took every one down at once, and a failed roll could not be
told from a good one. Here a second request waits behind the first, or joins it when it
asks for the same thing and the first has not begun (two plain restarts: one roll).
Per-replica worker changes (a crash's respawn, a call's model switch, keep-alive) stay
with each replica's dispatcher thread, which the owner's steps wait on.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from lilbee_workers.errors import WorkerError

log = structlog.get_logger("lilbee_workers.role_owner")


@dataclass
class Outcome:
    """What a lifecycle step did: ``ok``; else ``reason`` says why not, and
    ``rolled_back`` whether the role is back on the settings it had before."""

    ok: bool = True
    reason: str = ""
    rolled_back: bool = False
    error: WorkerError | None = None
    """The typed error for a caller (a model that cannot load), when there is one."""


@dataclass
class Job:
    """One lifecycle step asked of the owner; ``wait`` for it, then read ``outcome``."""

    verb: str
    step: Callable[[], Outcome]
    key: object = None
    """Jobs with the same verb and a key not None are one: a second joins the first."""
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def result(self, timeout: float | None = None) -> Outcome:
        """The outcome, once done (a failed ``Outcome`` if not done by ``timeout``)."""
        if not self.done.wait(timeout):
            return Outcome(ok=False, reason=f"{self.verb} still running after {timeout}s")
        assert self.outcome is not None
        return self.outcome


class RoleOwner:
    """Runs a role's lifecycle jobs in order, on one thread of its own (started at the
    first job, ended by ``close``)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._cond = threading.Condition()
        self._jobs: deque[Job] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None

    def run(self, verb: str, step: Callable[[], Outcome], key: object = None) -> Job:
        """Queue ``step``; a job with the same verb and key still waiting is joined."""
        with self._cond:
            if key is not None:
                for waiting in self._jobs:
                    if waiting.verb == verb and waiting.key == key:
                        return waiting
            job = Job(verb, step, key)
            if self._closed:
                job.outcome = Outcome(ok=False, reason=f"{self.role} is shutting down")
                job.done.set()
                return job
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name=f"owner-{self.role}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
            return job

    def close(self) -> None:
        """Take no more jobs; the one running finishes (the role's close ends it soon),
        the waiting ones are answered as refused."""
        with self._cond:
            self._closed = True
            waiting = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
        for job in waiting:
            job.outcome = Outcome(ok=False, reason=f"{self.role} is shutting down")
            job.done.set()

    def join(self, timeout: float) -> bool:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            try:
                job.outcome = job.step()
            except Exception as exc:  # never silent; the role keeps what it has
                log.exception("lifecycle step failed", role=self.role, verb=job.verb)
                job.outcome = Outcome(ok=False, reason=f"{job.verb} failed: {exc!r}")
            finally:
                if job.outcome is None:
                    job.outcome = Outcome(ok=False, reason=f"{job.verb} ended without a result")
                job.done.set()
