"""Errors across the wire: a ``WorkerError`` becomes an ``ErrorFrame`` on one side and
the same exception class again on the other."""

from __future__ import annotations

from lilbee_workers.errors import ERRORS_BY_KIND, WorkerError
from lilbee_workers.transport.frames import ErrorFrame


def to_frame(error: WorkerError, request_id: int) -> ErrorFrame:
    """``error`` as a frame answering request ``request_id``."""
    return ErrorFrame(
        id=request_id,
        kind=error.kind,
        message=error.message,
        role=error.role,
        retryable=error.retryable,
        log_path=error.log_path,
        log_tail=error.log_tail,
        param=error.param,
    )


def from_frame(frame: ErrorFrame) -> WorkerError:
    """The exception an ``ErrorFrame`` stands for."""
    cls = ERRORS_BY_KIND.get(frame.kind, WorkerError)
    return cls(
        frame.message,
        role=frame.role,
        log_path=frame.log_path,
        log_tail=frame.log_tail,
        param=frame.param,
    )
