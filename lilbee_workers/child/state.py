"""Which request the worker runs, and which requests are cancelled.

The serving thread begins and ends requests; the heartbeat thread delivers cancels.
Both go through one lock, and a cancel names the request it is for, so it can never
hit another one: request ids only grow on a worker's data pipe, so a cancel for an id
not begun yet is kept for it, and one for an id already finished is dropped.
"""

from __future__ import annotations

import threading

_MAX_EARLY_CANCELS = 256


class RequestState:
    """The in-flight request id, the served count, and the current request's cancel flag."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.served = 0
        self.cancel = threading.Event()
        """Set while the request being served is cancelled (handlers poll it)."""
        self._last_begun = 0
        self._early: set[int] = set()

    def begin(self, request_id: int) -> None:
        """The serving thread starts ``request_id``: cancelled already if its cancel came first."""
        with self._lock:
            self.in_flight = request_id
            self._last_begun = max(self._last_begun, request_id)
            if request_id in self._early:
                self.cancel.set()
            else:
                self.cancel.clear()
            self._early = {early for early in self._early if early > request_id}

    def end(self) -> None:
        with self._lock:
            self.in_flight = 0
            self.served += 1
            self.cancel.clear()

    def cancel_request(self, request_id: int) -> None:
        """Cancel ``request_id``: now if it runs, when it begins if it has not yet."""
        with self._lock:
            if request_id == self.in_flight and request_id:
                self.cancel.set()
            elif request_id > self._last_begun:
                if len(self._early) >= _MAX_EARLY_CANCELS:
                    self._early.discard(min(self._early))
                self._early.add(request_id)
            # else: that request has finished; a late cancel must not touch the next one

    def cancel_current(self) -> None:
        """Shutdown: stop whatever runs now."""
        with self._lock:
            if self.in_flight:
                self.cancel.set()
