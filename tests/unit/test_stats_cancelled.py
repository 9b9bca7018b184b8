"""A call cancelled in the worker counts as cancelled: not served, not an error, unless
its own timeout cancelled it (its caller got WorkerTimeout: an error). Replicas add the
counts up."""

from __future__ import annotations

from lilbee_workers.parent.replicas import merge
from lilbee_workers.parent.stats import RoleStats, cancelled_answer
from lilbee_workers.transport.frames import ChatResult, EmbedResult, ErrorFrame
from lilbee_workers.types import RoleStatus


def result(finish_reason: str) -> ChatResult:
    return ChatResult(id=1, text="Bees", finish_reason=finish_reason)


def test_only_the_workers_own_word_marks_a_call_cancelled() -> None:
    assert cancelled_answer(result("cancelled"))
    assert cancelled_answer(ErrorFrame(id=1, kind="cancelled", message="cancelled"))
    assert not cancelled_answer(result("length"))
    assert not cancelled_answer(ErrorFrame(id=1, kind="crashed", message="boom"))
    assert not cancelled_answer(EmbedResult(id=1, dim=0, count=0, vectors=b""))
    assert not cancelled_answer(None)


def test_cancelled_is_counted_apart_and_a_timeout_is_an_error() -> None:
    stats = RoleStats()
    stats.answered(error=False, retried=False)
    stats.answered(error=False, retried=False, cancelled=True)
    stats.answered(error=True, retried=False, cancelled=True)  # a Cancelled error frame
    stats.answered(error=False, retried=False, cancelled=True, timed_out=True)
    stats.answered(error=False, retried=False, timed_out=True)  # answered, but too late
    counts = stats.counts()
    assert (counts["served"], counts["errors"], counts["cancelled"]) == (1, 2, 2)


def test_replicas_add_up_their_cancelled_calls() -> None:
    each = [RoleStatus(role="chat", state="ready", cancelled=n, served=1) for n in (2, 3)]
    merged = merge("chat", each, [[], []])
    assert (merged.cancelled, merged.served) == (5, 2)
