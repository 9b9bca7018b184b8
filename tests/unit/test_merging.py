"""The merged-batch rules (parent/merging.py) as pure functions, and the dispatcher doing
what they say against a fake worker (tests/fake_worker.py): a lost batch is split and
each caller's call retried alone; a batch never outgrows max_frame_bytes either way."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fake_worker import Script

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import Cancelled, WorkerCrashed
from lilbee_workers.parent.attempt import Lost
from lilbee_workers.parent.dispatcher import RoleDispatcher
from lilbee_workers.parent.merging import Budget, Next, after_loss, reply_bytes
from lilbee_workers.parent.replicas import ReplicaSet
from lilbee_workers.transport.frames import (
    BatchRequest,
    BatchResult,
    EmbedRequest,
    EmbedResult,
    ErrorFrame,
    RerankRequest,
    RerankResult,
)
from lilbee_workers.types import RerankItem

BIG = 2**64 - 1


@dataclass
class Part:
    retried: bool = False
    chunks_delivered: int = 0
    cancelled: bool = False
    finished: bool = False


def test_a_lost_batch_gives_each_unanswered_part_its_own_retry() -> None:
    parts = [Part(), Part(cancelled=True), Part(finished=True), Part()]
    steps = after_loss(Lost("died"), parts, closing=False)
    assert steps == [Next.RETRY_ALONE, Next.CANCELLED, Next.ANSWERED, Next.RETRY_ALONE]


def test_only_a_call_lost_again_alone_is_given_up() -> None:
    assert after_loss(Lost("died"), [Part(retried=True)], closing=False) == [Next.GIVE_UP]
    assert after_loss(Lost("died"), [Part(chunks_delivered=2)], closing=False) == [Next.GIVE_UP]
    assert after_loss(Lost("died"), [Part(), Part()], closing=True) == [Next.SHUT_DOWN] * 2
    abandoned = Lost("ignored cancel", abandoned=True)
    assert after_loss(abandoned, [Part()], closing=False) == [Next.CANCELLED]


def config(**settings: Any) -> RoleConfig:
    return RoleConfig(model="m.gguf", **settings)


def fill(budget: Budget, make: Any, count: int) -> list[Any]:
    taken = []
    for index in range(count):
        request = make(index)
        if budget.admit(request):
            taken.append(request)
    return taken


@pytest.mark.parametrize("n_embd", [16, 640, 4096])
def test_an_embed_batch_and_its_widest_reply_fit_the_frame_cap(n_embd: int) -> None:
    cap = 200_000
    make = lambda i: EmbedRequest(id=BIG, texts=["bee " * (i % 7 + 1)] * (i % 3 + 1))  # noqa: E731
    first = make(0)
    budget = Budget(first, config(coalesce_max_items=10_000), cap, n_embd)
    parts = [first, *fill(budget, make, 500)]
    assert len(parts) > 1 or n_embd == 4096
    request = BatchRequest(id=BIG, parts=parts, model=None)
    assert len(msgspec.msgpack.encode(request)) <= cap
    replies = [
        EmbedResult(
            id=BIG,
            dim=n_embd,
            count=len(p.texts),
            vectors=bytes(len(p.texts) * n_embd * 4),
            prompt_tokens=BIG,
        )
        for p in parts
    ]
    reply = len(msgspec.msgpack.encode(BatchResult(id=BIG, parts=replies)))  # type: ignore[arg-type]
    assert reply <= cap
    if n_embd >= 640:  # replies bound the batch: and the cap is used, not wasted
        assert reply > cap * 0.8
    errors = [ErrorFrame(id=BIG, kind="invalid_request", message="x" * 400) for _ in parts]
    assert len(msgspec.msgpack.encode(BatchResult(id=BIG, parts=errors))) <= cap  # type: ignore[arg-type]


def test_a_batch_of_long_texts_is_bounded_by_its_request_bytes() -> None:
    cap = 100_000
    make = lambda i: EmbedRequest(id=BIG, texts=["honey " * 2000], model="small")  # noqa: E731
    first = make(0)
    budget = Budget(first, config(coalesce_max_items=10_000), cap, 16)
    parts = [first, *fill(budget, make, 50)]
    size = len(msgspec.msgpack.encode(BatchRequest(id=BIG, parts=parts, model="small")))
    assert size <= cap < size + len(msgspec.msgpack.encode(first))  # one more would not fit


def test_a_rerank_batch_reply_with_documents_fits_the_frame_cap() -> None:
    cap = 50_000
    docs = ["the cat and the dog " * 20, "bees make honey", "rain"]
    make = lambda i: RerankRequest(id=BIG, query="q", documents=docs, return_documents=True)  # noqa: E731
    first = make(0)
    budget = Budget(first, config(coalesce_max_items=10_000), cap, 0)
    parts = [first, *fill(budget, make, 500)]
    items = [RerankItem(index=BIG, score=-1.2345678e-300, document=d) for d in docs]
    replies = [RerankResult(id=BIG, results=items) for _ in parts]
    assert len(msgspec.msgpack.encode(BatchResult(id=BIG, parts=replies))) <= cap  # type: ignore[arg-type]


def test_an_embed_reply_of_unknown_width_is_never_merged() -> None:
    assert reply_bytes(EmbedRequest(id=1, texts=["a"]), n_embd=0) is None
    budget = Budget(EmbedRequest(id=1, texts=["a"]), config(), 1 << 20, 0)
    assert not budget.has_room


def test_items_still_bound_a_batch() -> None:
    budget = Budget(EmbedRequest(id=1, texts=["a"] * 3), config(coalesce_max_items=8), 1 << 20, 8)
    assert budget.admit(EmbedRequest(id=1, texts=["a"] * 5))
    assert not budget.admit(EmbedRequest(id=1, texts=["a"]))


# ------------------------------------------------------------ the dispatcher, with a fake


@pytest.fixture
def model(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    yield str(path)


def queued_behind_a_load(
    script: Script, model: str, log_dir: Path, requests: list[EmbedRequest], cap: int = 1 << 20
) -> tuple[RoleDispatcher, list[Any]]:
    """Queue ``requests`` while the first worker loads, so that they run merged."""
    gate = threading.Event()
    script.hold_start[1] = gate
    role_config = RoleConfig(model=model, restart_backoff_s=0.01, restart_backoff_max_s=0.02)
    role = RoleDispatcher("embed", role_config, log_dir, cap, new_worker=script.factory)
    role.start()
    calls = [role.submit(request) for request in requests]
    gate.set()
    results: list[Any] = []
    for call in calls:
        try:
            results.append(call.next_frame(10))
        except WorkerCrashed as exc:
            results.append(exc)
    return role, results


def test_a_poison_part_of_a_lost_batch_is_named_alone(model: str, tmp_path: Path) -> None:
    script = Script(on_request={1: ["crash"], 2: ["crash"]})
    requests = [EmbedRequest(id=i, texts=[f"text {i}"]) for i in (1, 2, 3)]
    role, results = queued_behind_a_load(script, model, tmp_path, requests)
    try:
        first = script.workers[0].requests
        assert len(first) == 1 and isinstance(first[0], BatchRequest)  # they ran merged
        assert isinstance(results[0], WorkerCrashed) and "2 times" in results[0].message
        assert not results[0].retryable
        assert [r.id for r in results[1:]] == [2, 3]  # the batch-mates are answered
        alone = [r for w in script.workers[1:] for r in w.requests]
        assert [type(r).__name__ for r in alone] == ["EmbedRequest"] * 3  # each alone
        assert [r.texts for r in alone] == [["text 1"], ["text 2"], ["text 3"]]
        status = role.status()
        assert (status.retried, status.retried_ok, status.errors, status.served) == (3, 2, 1, 2)
    finally:
        role.close()
        assert role.join(10)


def test_a_batch_never_outgrows_the_frame_cap(model: str, tmp_path: Path) -> None:
    cap = 4096  # each request fits alone, the eight of them would not
    script = Script()
    requests = [EmbedRequest(id=i, texts=["bee " * 200]) for i in range(8)]
    role, results = queued_behind_a_load(script, model, tmp_path, requests, cap)
    try:
        assert [r.id for r in results] == list(range(8))
        sent = script.workers[0].requests
        assert any(isinstance(r, BatchRequest) for r in sent)  # still merged where it fits
        assert all(len(msgspec.msgpack.encode(r)) <= cap for r in sent)
        assert sum(len(r.parts) if isinstance(r, BatchRequest) else 1 for r in sent) == 8
    finally:
        role.close()
        assert role.join(10)


def test_a_lost_batch_is_handed_to_another_replica_part_by_part(model: str, tmp_path: Path) -> None:
    """With replicas, the parts of a batch lost on one replica go to another, where
    each runs alone: the poison one is named there, its batch-mates are answered."""
    scripts = [Script(on_request={1: ["crash"]}), Script(on_request={1: ["crash"]})]
    config = RoleConfig(model=model, replicas=2, restart_backoff_s=0.01, restart_backoff_max_s=0.02)
    factories = [script.factory for script in scripts]
    role = ReplicaSet("embed", config, tmp_path, 1 << 20, new_worker=lambda i: factories[i])
    role.start()
    try:
        assert role.wait_started(10)
        first = role.replicas[0]
        assert first.queue.hold_if_idle()  # queue the calls on replica 0, then let them run
        calls = [first.submit(EmbedRequest(id=i, texts=[f"text {i}"])) for i in (1, 2, 3)]
        first.queue.release()
        results: list[Any] = []
        for call in calls:
            try:
                results.append(call.next_frame(10))
            except WorkerCrashed as exc:
                results.append(exc)
        assert isinstance(scripts[0].workers[0].requests[0], BatchRequest)  # merged there
        assert isinstance(results[0], WorkerCrashed) and "2 times" in results[0].message
        assert [r.id for r in results[1:]] == [2, 3]
        alone = [r for w in scripts[1].workers for r in w.requests]
        assert [type(r).__name__ for r in alone] == ["EmbedRequest"] * 3
    finally:
        role.close()
        assert role.join(10)


def test_a_caller_who_left_a_lost_batch_is_not_retried(model: str, tmp_path: Path) -> None:
    script = Script(on_request={1: ["hang"]})
    gate = threading.Event()
    script.hold_start[1] = gate
    role_config = RoleConfig(model=model, kill_after_s=0.5, restart_backoff_s=0.01)
    role = RoleDispatcher("embed", role_config, tmp_path, 1 << 20, new_worker=script.factory)
    role.start()
    try:
        calls = [role.submit(EmbedRequest(id=i, texts=[f"text {i}"])) for i in (1, 2, 3)]
        gate.set()
        deadline = time.monotonic() + 10
        while not (script.workers and script.workers[0].requests):
            assert time.monotonic() < deadline, "the batch never reached the worker"
            time.sleep(0.01)
        calls[1].cancel()  # caller 2 leaves while the merged batch hangs
        assert [calls[0].next_frame(10).id, calls[2].next_frame(10).id] == [1, 3]
        with pytest.raises(Cancelled):
            calls[1].next_frame(10)
        alone = [r.texts for w in script.workers[1:] for r in w.requests]
        assert alone == [["text 1"], ["text 3"]]  # each alone; the one who left, never
    finally:
        role.close()
        assert role.join(10)


def test_a_batch_lost_on_a_retiring_replica_is_answered_part_by_part_there(
    tmp_path: Path,
) -> None:
    """A replica being retired (a reload shrinking ``replicas``) takes no call back into
    its line, and with no other replica serving the hand-over fails: the parts of its
    lost batch each run alone on its fresh worker (they were each answered 'shutting
    down' before, found by review)."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    script = Script(on_request={1: ["crash"]})
    gate = threading.Event()
    script.hold_start[1] = gate
    config = RoleConfig(model=str(model), restart_backoff_s=0.01, restart_backoff_max_s=0.02)
    role = RoleDispatcher("embed", config, tmp_path, 1 << 20, new_worker=script.factory)
    role.start()
    try:
        calls = [role.submit(EmbedRequest(id=i, texts=[f"t{i}"])) for i in (1, 2, 3)]
        role.queue.retire()  # it finishes what it holds, and takes nothing back
        gate.set()
        assert [call.next_frame(10).id for call in calls] == [1, 2, 3]
        first, fresh = script.workers[0], script.workers[1]
        assert [type(r).__name__ for r in first.requests] == ["BatchRequest"]
        assert [(type(r).__name__, r.texts) for r in fresh.requests] == [  # type: ignore[union-attr]
            ("EmbedRequest", ["t1"]),
            ("EmbedRequest", ["t2"]),
            ("EmbedRequest", ["t3"]),
        ]
    finally:
        role.close()
        assert role.join(10)
