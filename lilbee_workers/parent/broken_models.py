"""Models that failed to load, remembered for a while: a call naming one is answered
with the load's error at once, instead of waiting on another doomed load."""

from __future__ import annotations

import time

import structlog

from lilbee_workers.errors import ModelError
from lilbee_workers.parent.policy import StartFailed

log = structlog.get_logger("lilbee_workers.lifecycle")


class BrokenModels:
    """Each broken model's error, until its cool-down ends (owned by one lifecycle)."""

    def __init__(self, role: str, log_path: str) -> None:
        self.role = role
        self.log_path = log_path
        self._errors: dict[str, tuple[float, ModelError]] = {}

    def error(self, name: str) -> ModelError | None:
        """The error to answer for ``name`` now, or None to try loading it."""
        entry = self._errors.get(name)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def record(self, name: str, exc: Exception, cooldown_s: float) -> ModelError:
        """``name`` failed to load with ``exc``: the error callers get, with the reason."""
        message = exc.message if isinstance(exc, StartFailed) else repr(exc)
        error = ModelError(
            f"{self.role}: cannot load model {name!r}: {message}",
            role=self.role,
            log_path=self.log_path,
            log_tail=exc.log_tail if isinstance(exc, StartFailed) else "",
        )
        self._errors[name] = (time.monotonic() + cooldown_s, error)
        log.error("model failed to load", role=self.role, model=name, reason=message)
        return error

    def loaded(self, name: str) -> None:
        self._errors.pop(name, None)

    def clear(self) -> None:
        self._errors.clear()
