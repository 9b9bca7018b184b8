"""Coalescing: embed calls (and rank rerank calls) that queued while the worker was
busy run as one worker batch when it frees up (one ``llama_decode`` for many short texts
is 2-2.6x faster than one per text). Each caller keeps its own deadline and cancel, and
gets its own answer: a bad part fails alone. Which calls merge, how big a batch grows and
what each part does when its worker is lost are the rules of ``merging``; here they are
applied.
"""

from __future__ import annotations

from collections.abc import Callable

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import Cancelled, WorkerError
from lilbee_workers.parent import merging
from lilbee_workers.parent.attempt import Answered
from lilbee_workers.parent.calls import Attempted, Call
from lilbee_workers.parent.queue import RoleQueue
from lilbee_workers.parent.stats import RoleStats, cancelled_answer
from lilbee_workers.transport.channel import PipeChannel
from lilbee_workers.transport.frames import (
    AnyFrame,
    BatchRequest,
    BatchResult,
    ChatChunk,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    ErrorFrame,
    HealthReport,
    Request,
    RerankRequest,
    RerankResult,
)


class MergedCall:
    """Several queued calls of one role run as one ``BatchRequest`` on one worker."""

    def __init__(self, parts: list[Call]) -> None:
        self.parts = parts
        self.role = parts[0].role
        requests = [part.request for part in parts]
        assert all(isinstance(r, (EmbedRequest, RerankRequest)) for r in requests)
        model = getattr(requests[0], "model", None)
        self.request: Request = BatchRequest(id=0, parts=requests, model=model)  # type: ignore[arg-type]
        self.expires_at: float | None = None  # each caller waits out its own deadline
        self.chunks_delivered = 0
        self.part_errors: list[bool] = []
        self._bound: tuple[PipeChannel[HealthReport], int] | None = None

    @property
    def cancelled(self) -> bool:
        """Every caller gave up: only then is the batch worth stopping."""
        return all(part.cancelled for part in self.parts)

    @property
    def finished(self) -> bool:
        return all(part.finished for part in self.parts)

    @property
    def retried(self) -> bool:
        return any(part.retried for part in self.parts)

    @retried.setter
    def retried(self, value: bool) -> None:
        for part in self.parts:
            part.retried = value

    def bind(self, health: PipeChannel[HealthReport], attempt_id: int) -> None:
        self._bound = (health, attempt_id)
        if self.cancelled:
            self.send_cancel()

    def unbind(self) -> None:
        self._bound = None

    def send_cancel(self) -> None:
        bound = self._bound
        if bound is not None:
            Call._send_cancel(*bound)

    def deliver_chunk(self, frame: ChatChunk) -> None:
        """Embed batches stream nothing."""

    def finish(self, frame: AnyFrame) -> None:
        """Hand each caller its own answer (one error frame answers all)."""
        if isinstance(frame, BatchResult) and len(frame.parts) == len(self.parts):
            for part, answer in zip(self.parts, frame.parts, strict=True):
                part.finish(answer)
            self.part_errors = [isinstance(answer, ErrorFrame) for answer in frame.parts]
        else:
            for part in self.parts:
                part.finish(frame)
            self.part_errors = [True] * len(self.parts)

    def fail(self, error: WorkerError) -> None:
        for part in self.parts:
            part.fail(error)

    def time_out(self) -> None:
        """Never called: the batch has no deadline of its own."""

    def cancelled_error(self) -> Cancelled:
        return Cancelled(f"{self.role} calls were cancelled", role=self.role)

    def settle_if_abandoned(self) -> bool:
        """Answer the parts whose callers left or timed out; True if none is left."""
        return all([part.settle_if_abandoned() for part in self.parts])


def calls_of(call: Attempted) -> list[Call]:
    """The callers' calls behind an attempt: the parts of a merged one, or itself."""
    return list(call.parts) if isinstance(call, MergedCall) else [call]  # type: ignore[list-item]


def batch_shape(frame: AnyFrame) -> tuple[int, int | None] | None:
    """(texts or documents, tokens if known) of an answer, for the batch histograms."""
    if isinstance(frame, EmbedResult):  # the common cases first: this runs on every call
        return frame.count, frame.prompt_tokens
    if not isinstance(frame, (BatchResult, RerankResult)):
        return None
    parts = frame.parts if isinstance(frame, BatchResult) else [frame]
    embedded = [part for part in parts if isinstance(part, EmbedResult)]
    if embedded:
        return sum(p.count for p in embedded), sum(p.prompt_tokens for p in embedded)
    ranked = [part for part in parts if isinstance(part, RerankResult)]
    return (sum(len(p.results) for p in ranked), None) if ranked else None


def coalesce(
    call: Call, queue: RoleQueue, config: RoleConfig, max_frame_bytes: int, n_embd: int
) -> Attempted:
    """``call`` and the compatible calls queued behind it, as one worker batch, within
    the bounds of ``merging`` (items; request and reply bytes under ``max_frame_bytes``,
    the reply sized by the loaded model's ``n_embd``, 0 if unknown)."""
    if not (config.coalesce and merging.can_merge(call, config)):
        return call
    budget = merging.Budget(call.request, config, max_frame_bytes, n_embd)
    if not budget.has_room:
        return call
    if config.coalesce_wait_ms > 0:
        queue.wait_for_calls(config.coalesce_wait_ms / 1000.0)
    kind, model = type(call.request), getattr(call.request, "model", None)

    def joins(other: Call) -> bool:
        return (
            merging.can_merge(other, config)
            and type(other.request) is kind
            and getattr(other.request, "model", None) == model
            and budget.admit(other.request)
        )

    more = queue.take_more(joins, lambda other: 0, 0)  # the budget counts the items
    return MergedCall([call, *more]) if more else call


def account(stats: RoleStats, call: Attempted, outcome: Answered) -> None:
    """Count an answered call (each part of a merged one) and its batch shape."""
    errors = call.part_errors if isinstance(call, MergedCall) else [outcome.error]
    cancelled = cancelled_answer(outcome.frame)
    for error, part in zip(errors, calls_of(call), strict=True):  # each caller's own deadline
        stats.answered(
            error=error, retried=call.retried, cancelled=cancelled, timed_out=part.timed_out
        )
    if isinstance(outcome.frame, ChatResult):
        stats.generated(outcome.frame.completion_tokens)
    shape = batch_shape(outcome.frame) if outcome.frame is not None else None
    if shape is not None:
        stats.batch(*shape)


def answer_lost(
    parts: list[Call],
    steps: list[merging.Next],
    fail: Callable[[Call, WorkerError], None],
    crashed: Callable[..., WorkerError],
    shutting_down: WorkerError,
    log_path: str,
) -> list[Call]:
    """Answer the callers' calls of a lost attempt that end here, as ``merging`` decided
    (each on its own); return the ones to retry alone. ``fail(call, error)`` gives a
    call up (the dispatcher's: it counts, and quarantines a poison). ``crashed(attempts,
    chunks_delivered=, log_path=)``: the error of a call whose attempts are spent."""
    retry = []

    def give_up(part: Call) -> WorkerError:
        attempts, chunks = merging.attempts_of(part), part.chunks_delivered
        return crashed(attempts, chunks_delivered=chunks, log_path=log_path)

    for part, step in zip(parts, steps, strict=True):
        if step is merging.Next.RETRY_ALONE:
            retry.append(part)
        elif step is merging.Next.CANCELLED:
            part.fail(part.cancelled_error())
        elif step is not merging.Next.ANSWERED:
            fail(part, shutting_down if step is merging.Next.SHUT_DOWN else give_up(part))
    return retry
