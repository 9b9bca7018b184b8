"""Per-request limits, checked before a request reaches any queue or worker.

One pure function, called by the daemon for socket requests and by ``Supervisor`` for
in-process calls, so both enforce the same limits. Total size is bounded separately by
``max_frame_bytes`` (a frame over it is never decoded).
"""

from __future__ import annotations

import math

from lilbee_workers import catalog
from lilbee_workers.config import SupervisorConfig
from lilbee_workers.errors import InvalidRequest
from lilbee_workers.transport.frames import (
    BatchRequest,
    ChatRequest,
    EmbedRequest,
    Request,
    RerankRequest,
)


def check_request(role: str, request: Request, config: SupervisorConfig) -> None:
    """Raise ``InvalidRequest`` naming the limit when ``request`` is over one of
    ``role``'s limits. A role that is not configured passes (its dispatcher answers)."""
    if isinstance(request, BatchRequest):  # it would skip every per-request limit
        raise InvalidRequest("batch requests are the supervisor's own; send each request")
    role_config = config.roles.get(role)
    if role_config is None:
        return
    check_model(role, getattr(request, "model", None), config)
    items = _items(request)
    if items is not None:
        what, count = items
        limit = role_config.max_batch_items
        if count > limit:
            raise InvalidRequest(
                f"{count} {what} in one request is over the limit of {limit} "
                f"(roles.{role}.max_batch_items); split the request",
                role=role,
            )


def _items(request: Request) -> tuple[str, int] | None:
    """What a request carries a list of, and how many."""
    if isinstance(request, EmbedRequest):
        return "texts", len(request.texts)
    if isinstance(request, RerankRequest):
        return "documents", len(request.documents)
    if isinstance(request, ChatRequest):
        return "messages", len(request.messages)
    return None


def check_model(role: str, model: str | None, config: SupervisorConfig) -> None:
    """A model a request names must be one of the role's names (never a path)."""
    role_config = config.roles.get(role)
    if model is None or role_config is None:
        return
    known = catalog.names(role_config)
    if model not in known:
        raise InvalidRequest(
            f"{role} has no model {model!r} (it serves: {', '.join(known)})", role=role
        )


def check_timeout(timeout: float | None) -> None:
    """A call's ``timeout``: unset, or a finite number of seconds above zero."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidRequest(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise InvalidRequest(f"timeout must be finite and above zero, got {timeout}")
