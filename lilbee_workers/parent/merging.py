"""Merged-batch rules, in one place: which queued calls may share one worker batch, how
big a batch may grow, and what each caller's call does when the worker is lost under
an attempt (``batch`` builds the batches, the dispatcher does what these rules say).

* Embed calls, and rerank calls with a rank head, merge; a call that has been lost once
  (it has used its retry) never merges again.
* A batch grows up to ``coalesce_max_items`` texts or documents, and while both its
  request and the reply it can get back fit ``max_frame_bytes``: merging never turns
  requests that fit alone into a "too large" error. An embed reply's size is known only
  from the loaded model's ``n_embd``; without it a call runs alone.
* A lost worker (crash, hang, ``kill_after_s``) splits the batch: each caller's call that
  had sent nothing gets its own one retry **alone** (on a fresh worker, or another
  replica), so only a request that fails by itself is answered "poison request?".
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

import msgspec

from lilbee_workers.config import RoleConfig
from lilbee_workers.parent import policy
from lilbee_workers.parent.attempt import Lost
from lilbee_workers.parent.calls import Call
from lilbee_workers.transport.frames import (
    BatchRequest,
    BatchResult,
    EmbedRequest,
    Request,
    RerankRequest,
)

_BIG_ID = 2**64 - 1  # ids take their widest encoding in the size bounds
REPLY_PART_OVERHEAD = 128
"""Bytes of one part's result frame beyond its payload (tag, id, dim, count, token
count, the payload's header): an ``EmbedResult`` with the widest ints takes 77."""
ERROR_PART_BYTES = 1024
"""Room kept for a part answered by an error frame (a message of a line or two)."""
RERANK_ITEM_BYTES = 48
"""One scored document without its text (index, score, keys): at most 36 encoded."""


def can_merge(call: Call, config: RoleConfig) -> bool:
    """Calls whose requests a worker batch can carry: embed (any options mix), and
    rerank with a rank head (generative scoring gains nothing from a batch). A call that
    was lost once runs alone: it has used its retry, the others have not."""
    request = call.request
    mergeable = isinstance(request, EmbedRequest) or (
        isinstance(request, RerankRequest) and config.rerank_mode == "rank"
    )
    return mergeable and not call.cancelled and not call.retried


def items_of(request: Request) -> int:
    """Texts or documents: what ``coalesce_max_items`` counts."""
    if isinstance(request, EmbedRequest):
        return len(request.texts)
    if isinstance(request, RerankRequest):
        return len(request.documents)
    return 1


def request_bytes(request: Request) -> int:
    """The request's bytes as a part of a ``BatchRequest`` (exact: the same encoding)."""
    return len(msgspec.msgpack.encode(request))


def reply_bytes(request: Request, n_embd: int) -> int | None:
    """Most bytes of the part's answer in a ``BatchResult``; None when unknown (an embed
    reply of a model whose ``n_embd`` is not known)."""
    if isinstance(request, EmbedRequest):
        if n_embd <= 0:
            return None
        payload = len(request.texts) * n_embd * 4  # float32 rows
    elif isinstance(request, RerankRequest):
        texts = sum(len(doc.encode("utf-8")) + 5 for doc in request.documents)
        payload = len(request.documents) * RERANK_ITEM_BYTES
        payload += texts if request.return_documents else 0
    else:
        return None
    return max(payload + REPLY_PART_OVERHEAD, ERROR_PART_BYTES)


class Budget:
    """Room left in one batch: items, request bytes and reply bytes, starting from the
    call it is built around (which runs whatever its own size)."""

    def __init__(
        self, first: Request, config: RoleConfig, max_frame_bytes: int, n_embd: int
    ) -> None:
        model = getattr(first, "model", None)
        shell_in = len(msgspec.msgpack.encode(BatchRequest(id=_BIG_ID, parts=[], model=model)))
        shell_out = len(msgspec.msgpack.encode(BatchResult(id=_BIG_ID, parts=[])))
        self.n_embd = n_embd
        self.items = config.coalesce_max_items - items_of(first)
        self.request_room = max_frame_bytes - shell_in - 5 - request_bytes(first)
        reply = reply_bytes(first, n_embd)
        self.reply_room = -1 if reply is None else max_frame_bytes - shell_out - 5 - reply

    @property
    def has_room(self) -> bool:
        return self.items > 0 and self.request_room > 0 and self.reply_room > 0

    def admit(self, request: Request) -> bool:
        """Take ``request`` into the batch if it fits every bound (and count it)."""
        items = items_of(request)
        if items > self.items:
            return False
        reply = reply_bytes(request, self.n_embd)
        if reply is None or reply > self.reply_room:
            return False
        sent = request_bytes(request)
        if sent > self.request_room:
            return False
        self.items -= items
        self.request_room -= sent
        self.reply_room -= reply
        return True


class Next(enum.Enum):
    """What one caller's call does after the worker was lost under its attempt."""

    ANSWERED = "answered"  # already answered (its caller left, or timed out)
    SHUT_DOWN = "shut down"  # the role is closing: answered WorkerUnavailable
    CANCELLED = "cancelled"  # its caller gave up: nothing to retry for
    RETRY_ALONE = "retry alone"  # its one retry, by itself: here or on another replica
    GIVE_UP = "give up"  # lost on its retry too (poison?), or after chunks reached it


class Part(Protocol):
    """What the rules read of a caller's call."""

    retried: bool
    chunks_delivered: int

    @property
    def cancelled(self) -> bool: ...

    @property
    def finished(self) -> bool: ...


def attempts_of(part: Part) -> int:
    """Attempts the call has had, the one just lost included (a retried call had two)."""
    return 2 if part.retried else 1


def after_loss(lost: Lost, parts: Sequence[Part], closing: bool) -> list[Next]:
    """For each caller's call in the lost attempt (one, or a merged batch's parts): what
    it does next. Batch-mates are judged each on its own, never as one unit."""

    def one(part: Part) -> Next:
        if part.finished:
            return Next.ANSWERED
        if closing:
            return Next.SHUT_DOWN
        if part.cancelled or lost.abandoned:
            return Next.CANCELLED
        if policy.should_retry(attempts_of(part) - 1, part.chunks_delivered):
            return Next.RETRY_ALONE
        return Next.GIVE_UP

    return [one(part) for part in parts]
