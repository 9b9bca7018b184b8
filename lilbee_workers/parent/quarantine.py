"""Poison quarantine: a request that killed its worker twice is refused at once when it
comes again, for ``quarantine_s``, without a worker.

Without it, a client that resends a poison request (curl in a loop; the openai client
retries a 5xx twice) kills a worker each time, and enough of those open the role's
circuit for every caller. A request is known by a fingerprint of what it asks: the
role, the model it runs on, and the msgspec encoding of the request with its id and
routing role zeroed (so the same request from Python, the socket or HTTP matches).
One ``Quarantine`` per role, shared by its replicas, behind one lock; an operator's
restart, a reload or a switch of the default model clears it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

import msgspec

from lilbee_workers.errors import WorkerCrashed, WorkerError
from lilbee_workers.parent.calls import Attempted, Call
from lilbee_workers.transport.frames import Request

MAX_ENTRIES = 1024
"""Most fingerprints kept (each costs two worker crashes to earn; the oldest go first)."""


def fingerprint(role: str, model: str, request: Request) -> bytes:
    """What ``request`` asks of ``role`` on ``model``, whatever its id or route."""
    plain = msgspec.structs.replace(request, id=0)
    if getattr(plain, "role", ""):
        plain = msgspec.structs.replace(plain, role="")
    digest = hashlib.sha256(f"{role}\0{model}\0".encode())
    digest.update(msgspec.msgpack.encode(plain))  # no frame cap: never refused here
    return digest.digest()


class Quarantine:
    """The role's poison requests, each until its quarantine ends, and how many
    sends of them were refused."""

    def __init__(self, role: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.role = role
        self.clock = clock
        self._lock = threading.Lock()
        self._until: dict[bytes, tuple[float, str]] = {}  # fingerprint -> (end, why)
        self._refused = 0

    @property
    def refused(self) -> int:
        """Sends refused because their request was quarantined."""
        with self._lock:
            return self._refused

    def remember(
        self,
        call: Attempted,
        model_of: Callable[[Request], str],
        error: WorkerError,
        seconds: float,
    ) -> None:
        """Quarantine the request of ``call`` (run on ``model_of(request)``) for
        ``seconds`` if ``error`` names it poison: it killed its worker on every attempt
        (a non-retryable ``WorkerCrashed``), and ran alone (never a merged batch's
        parts, whose culprit is not known)."""
        if seconds <= 0 or not isinstance(error, WorkerCrashed) or error.retryable:
            return
        if not isinstance(call, Call):
            return
        key = fingerprint(self.role, model_of(call.request), call.request)
        with self._lock:
            self._until.pop(key, None)  # re-inserted last: the newest
            self._until[key] = (self.clock() + seconds, error.message)
            while len(self._until) > MAX_ENTRIES:
                del self._until[next(iter(self._until))]

    def check(self, request: Request, model: str) -> None:
        """Raise the poison error at once if ``request`` is quarantined."""
        if not self._until:  # the common case: nothing quarantined, no hashing
            return
        key = fingerprint(self.role, model, request)
        with self._lock:
            entry = self._until.get(key)
            if entry is None:
                return
            left = entry[0] - self.clock()
            if left <= 0:
                del self._until[key]
                return
            self._refused += 1
        error = WorkerCrashed(
            f"{self.role}: this request is quarantined for another {left:.0f}s: it killed "
            f"the worker on every attempt (poison request); refused without a worker. "
            f"Run `lilbee-workers restart {self.role}` to clear it. It failed with: {entry[1]}",
            role=self.role,
        )
        error.retryable = False
        raise error

    def clear(self) -> None:
        """Forget every quarantined request (a restart, reload or model switch)."""
        with self._lock:
            self._until.clear()

    def held(self) -> int:
        """Requests quarantined now (some perhaps expired, dropped when next seen).
        (Not ``__len__``: an empty quarantine must not be falsy.)"""
        with self._lock:
            return len(self._until)
