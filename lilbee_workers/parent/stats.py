"""One role's counters, latencies and model load progress: written by whichever thread
runs a call (or watches a loading worker), read by ``status`` from any thread. One lock
guards them all."""

from __future__ import annotations

import bisect
import threading
from collections import Counter, deque
from typing import Any

from lilbee_workers.transport.frames import AnyFrame, ChatResult, ErrorFrame
from lilbee_workers.types import LATENCY_BUCKETS_MS


class RoleStats:
    """What ``status`` reports about a role's calls and restarts."""

    def __init__(self, window: int = 1024) -> None:
        self._lock = threading.Lock()
        self._latencies_ms: deque[float] = deque(maxlen=window)
        self._restarts = 0
        self._served = 0
        self._errors = 0
        self._cancelled = 0
        self._retried = 0
        self._retried_ok = 0
        self._internal_errors = 0
        self._batch_sizes: Counter[str] = Counter()
        self._batch_tokens: Counter[str] = Counter()
        self._latency_buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self._latency_sum_ms = 0.0
        self._tokens_generated = 0
        self._loading_generation = 0
        self._load_progress: float | None = None

    def answered(
        self, *, error: bool, retried: bool, cancelled: bool = False, timed_out: bool = False
    ) -> None:
        """A call got its final frame (an error frame counts as an error). ``cancelled``:
        the worker stopped it for its caller (``cancelled_answer``), which counts as
        cancelled, not served. ``timed_out``: its caller was answered ``WorkerTimeout``,
        an error whatever the worker sent."""
        with self._lock:
            if cancelled and not timed_out:
                self._cancelled += 1
            elif error or timed_out:
                self._errors += 1
            else:
                self._served += 1
                if retried:
                    self._retried_ok += 1

    def failed(self) -> None:
        """A call ended in an error raised on the supervisor's side."""
        with self._lock:
            self._errors += 1

    def retrying(self) -> None:
        with self._lock:
            self._retried += 1

    def restarted(self) -> None:
        """A worker was replaced after it died, hung, or was killed under a call."""
        with self._lock:
            self._restarts += 1

    def internal_error(self) -> None:
        """A bug was caught in a background thread (logged where it happened)."""
        with self._lock:
            self._internal_errors += 1

    def batch(self, items: int, tokens: int | None) -> None:
        """One worker batch of embed texts or rerank documents ran (power-of-two
        buckets; tokens when the answer counts them)."""
        with self._lock:
            self._batch_sizes[bucket(items)] += 1
            if tokens is not None:
                self._batch_tokens[bucket(tokens)] += 1

    def latency(self, milliseconds: float) -> None:
        with self._lock:
            self._latencies_ms.append(milliseconds)
            self._latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, milliseconds)] += 1
            self._latency_sum_ms += milliseconds

    def generated(self, tokens: int) -> None:
        """A chat, completion or vision answer of ``tokens`` completion tokens."""
        with self._lock:
            self._tokens_generated += tokens

    def load_begins(self) -> None:
        """A new load is about to start: status shows 0% from now on, never the last
        load's 100% (call before the role's state becomes starting or restarting)."""
        with self._lock:
            self._loading_generation = -1
            self._load_progress = 0.0

    def loading(self, generation: int) -> None:
        """Worker ``generation`` starts loading the role's model: from now on its progress
        is the one ``status`` shows (a standby spare's, or an older worker's, is not)."""
        with self._lock:
            self._loading_generation = generation
            self._load_progress = 0.0

    def load_progressed(self, generation: int, fraction: float) -> None:
        """Worker ``generation`` reports how far its load has come (0.0 to 1.0)."""
        with self._lock:
            if generation == self._loading_generation:
                self._load_progress = fraction

    def latency_window(self) -> list[float]:
        """The latest calls' latencies (ms), for percentiles over several replicas."""
        with self._lock:
            return list(self._latencies_ms)

    @property
    def restarts(self) -> int:
        with self._lock:
            return self._restarts

    def counts(self) -> dict[str, Any]:
        """The ``RoleStatus`` fields this object owns."""
        with self._lock:
            latencies = sorted(self._latencies_ms)
            return {
                "restarts": self._restarts,
                "served": self._served,
                "errors": self._errors,
                "cancelled": self._cancelled,
                "retried": self._retried,
                "retried_ok": self._retried_ok,
                "p50_ms": percentile(latencies, 0.50),
                "p99_ms": percentile(latencies, 0.99),
                "batch_sizes": dict(self._batch_sizes),
                "batch_tokens": dict(self._batch_tokens),
                "latency_buckets": list(self._latency_buckets),
                "latency_sum_ms": round(self._latency_sum_ms, 3),
                "tokens_generated": self._tokens_generated,
                "load_progress": self._load_progress,
            }


def bucket(value: int) -> str:
    """The power-of-two bucket of ``value``: "1", "2-3", "4-7", ..."""
    if value <= 1:
        return str(max(value, 0))
    low = 1 << (value.bit_length() - 1)
    return f"{low}-{2 * low - 1}"


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return round(sorted_values[index], 3)


def cancelled_answer(frame: AnyFrame | None) -> bool:
    """The worker's final frame says it stopped the call on a cancel: a stream cut short
    (``finish_reason`` cancelled) or a ``Cancelled`` error. Read from the answer, not the
    call's flag: a client that leaves after its answer came sets that flag too."""
    if isinstance(frame, ChatResult):
        return frame.finish_reason == "cancelled"
    return isinstance(frame, ErrorFrame) and frame.kind == "cancelled"
