"""Recovery rules, in one place: when a call is retried, how restarts back off, and when
a role gives up (circuit open).

* A call whose worker died, hung or overran its deadline is retried **once** on a fresh
  worker, and only if no streamed chunk had reached the caller.
* Handler errors (``InvalidRequest``, ``ModelError``) are answers, not crashes.
* Restarts back off exponentially with the number of recent crashes (tenacity); more
  than ``max_restarts`` crashes within ``restart_window_s`` open the circuit: the role is
  ``failed`` and answers ``WorkerUnavailable`` until ``failed_cooldown_s`` has passed or
  an operator restarts it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import tenacity

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import WorkerCrashed, WorkerUnavailable

T = TypeVar("T")

MAX_ATTEMPTS_PER_CALL = 2
"""A call runs at most twice: the first attempt and one retry."""


class StartFailed(Exception):
    """A worker did not reach READY. ``crashed`` failures count toward the circuit and
    are retried with backoff; a model that cannot load is not retried."""

    def __init__(self, message: str, *, crashed: bool, log_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.crashed = crashed
        self.log_tail = log_tail


def should_retry(attempt: int, chunks_delivered: int) -> bool:
    """Whether a call whose worker failed under it gets another attempt."""
    return attempt + 1 < MAX_ATTEMPTS_PER_CALL and chunks_delivered == 0


def blames_the_request(killed_by_us: bool, reason: str) -> bool:
    """Whether a lost worker is evidence against the request it ran, for the poison
    quarantine: it crashed by itself (a signal, an exit) or we killed it for how the call
    ran (hang, overrun, stall). A SIGKILL from outside (an operator, a chaos test, the
    OOM killer) proves nothing about the request: after two losses the caller still gets
    the poison error, but the request is quarantined only if every loss blamed it."""
    return killed_by_us or "killed by signal SIGKILL" not in reason


def crashed_error(
    role: str,
    attempts: int,
    reason: str,
    chunks_delivered: int,
    log_path: str,
    log_tail: str,
) -> WorkerCrashed:
    """The error a caller gets when recovery gives up on a call: ``retryable`` after one
    crash (mid-stream: a fresh try may well work), not after a crash on every attempt."""
    if chunks_delivered:
        message = (
            f"{role} worker failed mid-stream after {chunks_delivered} chunk(s) had been "
            f"delivered, so the call was not retried: {reason}"
        )
    elif attempts >= MAX_ATTEMPTS_PER_CALL:
        message = (
            f"{role} worker failed on this request {attempts} times (poison request?), "
            f"giving up: {reason}"
        )
    else:
        message = f"{role} worker failed: {reason}"
    error = WorkerCrashed(message, role=role, log_path=log_path, log_tail=log_tail)
    error.retryable = attempts < MAX_ATTEMPTS_PER_CALL
    return error


def unavailable_error(
    role: str, reason: str, seconds_left: float, log_path: str, log_tail: str
) -> WorkerUnavailable:
    """The error a failed role answers while its circuit is open."""
    return WorkerUnavailable(
        f"{role} is failed: {reason} "
        f"(next try in {seconds_left:.0f}s, or run `lilbee-workers restart {role}`)",
        role=role,
        log_path=log_path,
        log_tail=log_tail,
    )


class RestartPolicy:
    """Crash accounting, restart backoff and the circuit breaker for one role."""

    def __init__(self, config: RoleConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.crashes: deque[float] = deque()
        self.failed_until = 0.0
        self._backoff = tenacity.wait_exponential(
            multiplier=config.restart_backoff_s, max=config.restart_backoff_max_s
        )

    def record_crash(self) -> None:
        self.crashes.append(self.clock())

    def recent_crashes(self) -> int:
        horizon = self.clock() - self.config.restart_window_s
        while self.crashes and self.crashes[0] < horizon:
            self.crashes.popleft()
        return len(self.crashes)

    def circuit_open(self) -> bool:
        """Too many crashes in the window: stop restarting."""
        return self.recent_crashes() > self.config.max_restarts

    def open_circuit(self) -> None:
        self.failed_until = self.clock() + self.config.failed_cooldown_s

    def cooling_down(self) -> bool:
        return self.clock() < self.failed_until

    def reset(self) -> None:
        """An operator restart forgets past crashes."""
        self.crashes.clear()
        self.failed_until = 0.0

    def restart_delay(self) -> float:
        """Pause before the next start: none after a lone crash, then exponential."""
        crashes = self.recent_crashes()
        if crashes <= 1:
            return 0.0
        return float(self._backoff(_attempt_state(crashes - 1)))

    def bring_up(self, start: Callable[[], T], sleep: Callable[[float], None]) -> T:
        """Run ``start`` until it succeeds, backing off between crashed attempts; stops
        at once on a non-crash failure or when the circuit opens (re-raising it)."""

        def crashed_and_circuit_closed(retry_state: tenacity.RetryCallState) -> bool:
            outcome = retry_state.outcome
            if outcome is None or not outcome.failed:
                return False
            error = outcome.exception()
            if not isinstance(error, StartFailed) or not error.crashed:
                return False
            self.record_crash()
            return not self.circuit_open()

        retrying = tenacity.Retrying(
            retry=crashed_and_circuit_closed,
            wait=lambda state: self.restart_delay(),
            sleep=sleep,
            reraise=True,
        )
        return retrying(start)


def _attempt_state(attempt_number: int) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt_number
    return state
