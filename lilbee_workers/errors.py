"""The one small exception hierarchy callers see. It imports nothing of ours: the
mapping to and from the wire's ``ErrorFrame`` lives in ``transport.error_frames``."""

from __future__ import annotations

from typing import Literal

ErrorKind = Literal[
    "invalid_request",
    "model",
    "protocol",
    "crashed",
    "timeout",
    "unavailable",
    "overloaded",
    "cancelled",
    "forbidden",
    "internal",
]
"""What went wrong, in one word; each kind is one exception class below."""


class WorkerError(Exception):
    """Base of every error lilbee-workers raises to a caller."""

    kind: ErrorKind = "internal"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        role: str = "",
        log_path: str = "",
        log_tail: str = "",
        param: str = "",
    ) -> None:
        """``param``: the request field at fault, when one is (an ``InvalidRequest``'s
        ``max_tokens``, ``texts``...), so a face can name it (HTTP's ``param``)."""
        super().__init__(message)
        self.message = message
        self.role = role
        self.log_path = log_path
        self.log_tail = log_tail
        self.param = param

    def __str__(self) -> str:
        text = self.message
        if self.log_path:
            text += f" (worker log: {self.log_path})"
        if self.log_tail:
            text += "\n--- last lines of the worker log ---\n" + self.log_tail
        return text


class WorkerCrashed(WorkerError):
    """The worker died (or hung and was killed) and the call could not be completed."""

    kind: ErrorKind = "crashed"


class WorkerTimeout(WorkerError):
    """The call did not finish within the caller's timeout; it was cancelled."""

    kind: ErrorKind = "timeout"
    retryable = True


class WorkerUnavailable(WorkerError):
    """The role is failed (crash loop, model would not load), stopped or closing."""

    kind: ErrorKind = "unavailable"
    retryable = True


class Overloaded(WorkerError):
    """The role's queue is full."""

    kind: ErrorKind = "overloaded"
    retryable = True


class InvalidRequest(WorkerError):
    """The request is malformed or cannot be served as asked (bad types, too long...)."""

    kind: ErrorKind = "invalid_request"


class ModelError(WorkerError):
    """The model could not load, or llama.cpp refused the request."""

    kind: ErrorKind = "model"


class ProtocolError(WorkerError):
    """A frame could not be decoded: garbage, unknown tag, wrong type, over the cap."""

    kind: ErrorKind = "protocol"


class Cancelled(WorkerError):
    """The call was cancelled by its caller."""

    kind: ErrorKind = "cancelled"


class AccessDenied(WorkerError):
    """The daemon refused this client (its uid is not allowed)."""

    kind: ErrorKind = "forbidden"


class DaemonUnreachable(WorkerUnavailable):
    """No daemon answers on the socket."""


class ConfigError(ValueError):
    """The configuration is invalid; the message names the bad key."""


ERRORS_BY_KIND: dict[str, type[WorkerError]] = {
    cls.kind: cls
    for cls in (
        WorkerCrashed,
        WorkerTimeout,
        WorkerUnavailable,
        Overloaded,
        InvalidRequest,
        ModelError,
        ProtocolError,
        Cancelled,
        AccessDenied,
    )
}
"""The exception class for each error kind (``WorkerError`` for the rest)."""
