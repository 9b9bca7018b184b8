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
    CompleteRequest,
    EmbedRequest,
    Request,
    RerankRequest,
    VisionRequest,
)

MAX_TOKENS_LIMIT = 2**31
"""``max_tokens`` must be below this (llama.cpp counts tokens in 32-bit ints)."""
SEED_LIMIT = 2**32
"""``seed`` must be in [0, SEED_LIMIT) (llama.cpp's sampler seed is 32 bits)."""


def check_request(role: str, request: Request, config: SupervisorConfig) -> None:
    """Raise ``InvalidRequest`` naming the limit when ``request`` is over one of
    ``role``'s limits. A role that is not configured passes (its dispatcher answers)."""
    if isinstance(request, BatchRequest):  # it would skip every per-request limit
        raise InvalidRequest("batch requests are the supervisor's own; send each request")
    role_config = config.roles.get(role)
    if role_config is None:
        return
    check_model(role, getattr(request, "model", None), config)
    check_content(request)
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


def check_content(request: Request) -> None:
    """One rule for every face (Python, CLI, socket, HTTP), checked before any worker
    and again in the worker as a backstop: no empty text (a tokenizer that adds BOS
    would embed or continue nothing as if it were something), no empty stop string (it
    matches at once: an empty answer), and ``max_tokens`` and ``seed`` in the ranges
    llama.cpp takes. The error names the field (``param``)."""
    if isinstance(request, EmbedRequest):
        _no_empty(request.texts, "texts", "text")
    elif isinstance(request, CompleteRequest) and not request.prompt:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    elif isinstance(request, ChatRequest) and not any(m.content for m in request.messages):
        what = "every content is empty" if request.messages else "there are none"
        raise InvalidRequest(f"messages must not be empty ({what})", param="messages")
    elif isinstance(request, RerankRequest):
        if not request.query:
            raise InvalidRequest("query must not be empty", param="query")
        _no_empty(request.documents, "documents", "document")
        if request.top_n is not None and not 0 < request.top_n < MAX_TOKENS_LIMIT:
            raise InvalidRequest(f"top_n must be > 0 and below 2**31, got {request.top_n}",
                                 param="top_n")  # fmt: skip
    if isinstance(request, (ChatRequest, CompleteRequest)) and "" in request.stop:
        raise InvalidRequest("stop must not hold an empty string (it would match at once)",
                             param="stop")  # fmt: skip
    if isinstance(request, (ChatRequest, CompleteRequest, VisionRequest)):
        _check_generation(request.max_tokens, request.seed)


def _no_empty(texts: list[str], param: str, what: str) -> None:
    for index, text in enumerate(texts):
        if not text:
            raise InvalidRequest(f"{what} {index} is empty", param=param)


def _check_generation(max_tokens: int | None, seed: int | None) -> None:
    if max_tokens is not None and not 0 < max_tokens < MAX_TOKENS_LIMIT:
        raise InvalidRequest(
            f"max_tokens must be > 0 and below 2**31, got {max_tokens}", param="max_tokens"
        )
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise InvalidRequest(f"seed must be in [0, 2**32), got {seed}", param="seed")


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
