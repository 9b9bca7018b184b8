"""rerank through real worker subprocesses: a generated cross-encoder (RANK pooling),
and the generative fallback on gemma 3 270M."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest

from conftest import wait_until
from lilbee_workers import InvalidRequest, Supervisor, SupervisorConfig, WorkerUnavailable

DOCS = ["bees make honey", "rust code", "the cat and the dog", "honey is sweet", "sun and rain"]


@pytest.fixture(scope="module")
def rerank_sup(
    make_config: Callable[..., SupervisorConfig], tiny_reranker: str
) -> Iterator[Supervisor]:
    config = make_config({"rerank": {"model": tiny_reranker, "n_ctx": 256}})
    with Supervisor(config) as sup:
        yield sup


def test_one_score_per_document_ordered_and_deterministic(rerank_sup: Supervisor) -> None:
    first = rerank_sup.rerank("what do bees make", DOCS, return_documents=True)
    second = rerank_sup.rerank("what do bees make", DOCS)
    assert sorted(item.index for item in first) == list(range(len(DOCS)))
    scores = [item.score for item in first]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) > 1  # a real head, not a constant
    assert [(i.index, i.score) for i in first] == [(i.index, i.score) for i in second]
    assert all(item.document == DOCS[item.index] for item in first)
    assert all(item.document is None for item in second)


def test_batched_scores_equal_one_pair_at_a_time(rerank_sup: Supervisor) -> None:
    batched = {item.index: item.score for item in rerank_sup.rerank("honey", DOCS)}
    for index, doc in enumerate(DOCS):
        [alone] = rerank_sup.rerank("honey", [doc])
        assert alone.score == pytest.approx(batched[index], rel=1e-4, abs=1e-5)


def test_top_n_and_empty_list(rerank_sup: Supervisor) -> None:
    top = rerank_sup.rerank("bees", DOCS, top_n=2)
    assert len(top) == 2
    assert top == rerank_sup.rerank("bees", DOCS)[:2]
    assert rerank_sup.rerank("bees", []) == []
    with pytest.raises(InvalidRequest, match="top_n must be > 0"):
        rerank_sup.rerank("bees", DOCS, top_n=0)


def test_pair_longer_than_context_names_the_document_or_truncates(rerank_sup: Supervisor) -> None:
    long_doc = "honey " * 400
    with pytest.raises(InvalidRequest, match="document 1 with the query is"):
        rerank_sup.rerank("bees", ["short", long_doc])
    result = rerank_sup.rerank("bees", ["short", long_doc], truncate=True)
    assert len(result) == 2


def test_sigkill_mid_call_is_retried_with_the_right_answer(rerank_sup: Supervisor) -> None:
    reference = rerank_sup.rerank("what do bees make", DOCS)
    dispatcher = rerank_sup._dispatcher("rerank")
    before = dispatcher.restarts
    pid = rerank_sup.worker_pid("rerank")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the request will sit in the worker's pipe
    import threading

    def kill_once_in_flight() -> None:
        wait_until(lambda: dispatcher.status().in_flight == 1, what="rerank in flight")
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_once_in_flight)
    killer.start()
    result = rerank_sup.rerank("what do bees make", DOCS)
    killer.join()
    assert [(i.index, i.score) for i in result] == [(i.index, i.score) for i in reference]
    assert dispatcher.restarts == before + 1
    assert rerank_sup.worker_pid("rerank") != pid


def test_model_without_rank_head_is_refused_at_load(
    make_config: Callable[..., SupervisorConfig], model_path: str
) -> None:
    with Supervisor(make_config({"rerank": {"model": model_path}})) as sup:
        [status] = sup.status()
        assert status.state == "failed"
        assert "has no rank head" in status.last_exit and "gemma3" in status.last_exit
        with pytest.raises(WorkerUnavailable, match="no rank head"):
            sup.rerank("q", ["d"])


def test_generative_fallback_scores_with_gemma(
    make_config: Callable[..., SupervisorConfig], model_path: str
) -> None:
    config = make_config({"rerank": {"model": model_path, "rerank_mode": "generative"}})
    with Supervisor(config) as sup:
        docs = ["Bees make honey from nectar.", "The stock market fell today."]
        first = sup.rerank("What do bees make?", docs)
        second = sup.rerank("What do bees make?", docs)
        assert len(first) == 2
        assert all(0.0 <= item.score <= 1.0 for item in first)
        assert [(i.index, i.score) for i in first] == [(i.index, i.score) for i in second]
