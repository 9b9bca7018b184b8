"""Our errors as HTTP answers: a status code and OpenAI's error body."""

from __future__ import annotations

import re
from typing import Any

from lilbee_workers.errors import (
    AccessDenied,
    Cancelled,
    InvalidRequest,
    ModelError,
    Overloaded,
    ProtocolError,
    WorkerCrashed,
    WorkerError,
    WorkerTimeout,
    WorkerUnavailable,
)

RETRY_AFTER_S = 1
"""What ``Retry-After`` says on 429 and 503: queues drain and workers restart in seconds."""


class HttpError(Exception):
    """An answer that is not a ``WorkerError``: unknown model, body too big, bad auth."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


# (status, OpenAI error type); the first match wins, so subclasses come first.
_BY_CLASS: list[tuple[type[WorkerError], int, str]] = [
    (InvalidRequest, 400, "invalid_request_error"),
    (ProtocolError, 502, "server_error"),  # a frame we could not read: our fault, not the body's
    (AccessDenied, 403, "permission_error"),
    (Overloaded, 429, "rate_limit_error"),
    (WorkerTimeout, 504, "timeout_error"),
    (WorkerCrashed, 502, "server_error"),
    (WorkerUnavailable, 503, "server_error"),
    (ModelError, 500, "server_error"),
    (Cancelled, 499, "server_error"),
]


def status_of(error: WorkerError) -> tuple[int, str]:
    """The HTTP status and OpenAI error type for ``error``."""
    for cls, status, kind in _BY_CLASS:
        if isinstance(error, cls):
            return status, kind
    return 500, "server_error"


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


_TRUNCATE_HINT = re.compile(r" \(truncate=True, or \w+ --truncate, cuts it\)")
"""The Python and CLI hint in an over-long text's message: no HTTP client can use it."""


def worker_error_body(
    error: WorkerError, param_names: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, body) for a ``WorkerError``; the body names the worker's log if it has
    one, and the parameter at fault under its name in this endpoint's body
    (``param_names``: the request frame's field -> the body's, e.g. texts -> input)."""
    status, kind = status_of(error)
    message = _TRUNCATE_HINT.sub("; shorten it (this API does not truncate)", error.message)
    param = None
    if error.param:
        param = (param_names or {}).get(error.param, error.param)
        if param != error.param and message.startswith(error.param + " "):
            message = param + message[len(error.param) :]
    if error.log_path:
        message += f" (worker log: {error.log_path})"
    return status, error_body(message, kind, error.kind, param)


def retry_headers(status: int, error: WorkerError | None = None) -> dict[str, str]:
    """``Retry-After`` on 429 and 503; ``x-should-retry: false`` on a 5xx that a retry
    cannot help (a non-retryable error, such as a poison request that killed its worker
    twice), which the official openai clients obey instead of retrying on their own."""
    if status in (429, 503):
        return {"Retry-After": str(RETRY_AFTER_S)}
    if status >= 500 and error is not None and not error.retryable:
        return {"x-should-retry": "false"}
    return {}
