"""Which request the worker runs, which requests are cancelled, and how far its work
has come.

The serving thread begins and ends requests; the heartbeat thread delivers cancels.
Both go through one lock, and a cancel names the request it is for, so it can never
hit another one: request ids only grow on a worker's data pipe, so a cancel for an id
not begun yet is kept for it, and one for an id already finished is dropped.

``steps`` counts work done (llama.cpp's abort callback, polled between graph nodes,
calls ``step``); the heartbeat reports it, so the supervisor can tell a busy worker
that computes from one whose Python still answers pings while its decode is wedged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

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
        self.steps = 0
        """Units of work done (graph nodes computed): grows while the worker progresses.
        Written by the serving thread only (an int under the GIL), read by the heartbeat."""
        self.metered = True
        """Whether ``steps`` sees all of this worker's compute (False: a role whose work
        partly runs where no callback reaches, so no stall can be told from a pause)."""
        self._wedge: threading.Event | None = None
        self._streams: set[int] = set()
        self.batched = False  # streams run side by side (set with ``on_cancel``)
        self.on_cancel: Callable[[int], None] = lambda request_id: None
        """Batched serving (``parallel`` > 1): stops one running stream; set by the engine."""

    def begin(self, request_id: int) -> None:
        """The serving thread starts ``request_id``: cancelled already if its cancel came first."""
        with self._lock:
            self.in_flight = request_id
            self._last_begun = max(self._last_begun, request_id)
            if request_id in self._early:
                self.cancel.set()
            else:
                self.cancel.clear()
            self._early.discard(request_id)
            if not self.batched:  # ids begin in order: older cancels can no longer apply
                self._early = {early for early in self._early if early > request_id}

    def end(self) -> None:
        with self._lock:
            self.in_flight = min(self._streams, default=0)
            self.served += 1
            self.cancel.clear()

    def begin_stream(self, request_id: int) -> bool:
        """Batched serving: ``request_id`` starts beside others. True if its cancel came
        first (the caller stops it at once)."""
        with self._lock:
            self._streams.add(request_id)
            self.in_flight = min(self._streams)
            self._last_begun = max(self._last_begun, request_id)
            early = request_id in self._early
            self._early.discard(request_id)
            return early

    def end_stream(self, request_id: int) -> None:
        with self._lock:
            if request_id in self._streams:
                self._streams.discard(request_id)
                self.served += 1
            self.in_flight = min(self._streams, default=0)

    def cancel_request(self, request_id: int) -> None:
        """Cancel ``request_id``: now if it runs, when it begins if it has not yet."""
        with self._lock:
            if request_id in self._streams:
                self.on_cancel(request_id)  # that stream alone, at its next token
            elif request_id == self.in_flight and request_id:
                self.cancel.set()
            elif request_id > self._last_begun or self.batched:
                # Streams may begin out of order (a Ray actor's), so with them a cancel
                # for any id not running is kept until it begins (at most 256).
                if len(self._early) >= _MAX_EARLY_CANCELS:
                    self._early.discard(min(self._early))
                self._early.add(request_id)
            # else: that request has finished; a late cancel must not touch the next one

    def cancel_current(self) -> None:
        """Shutdown: stop whatever runs now."""
        with self._lock:
            if self.in_flight:
                self.cancel.set()

    def step(self) -> None:
        """One more unit of work done (called between llama.cpp graph nodes)."""
        self.steps += 1
        if self._wedge is not None:
            # Test fault (``DebugRequest(action="wedge")``): block here for good, inside
            # the decode, on an event the heartbeat thread never needs (the GIL is free).
            self._wedge.wait()

    def progress(self) -> int | None:
        """What the heartbeat reports: ``steps``, or None when they are not metered."""
        return self.steps if self.metered else None

    def arm_wedge(self) -> None:
        """Fault injection for tests: the next ``step`` of any request never returns."""
        self._wedge = threading.Event()
