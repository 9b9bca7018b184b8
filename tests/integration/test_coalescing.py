"""Coalescing: embed (and rank rerank) calls that queue while the worker is busy run as
one worker batch, and each caller still gets its own right answer (issue 11)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from conftest import wait_until
from lilbee_workers import InvalidRequest, Supervisor, SupervisorConfig, WorkerTimeout
from lilbee_workers.transport.frames import DebugRequest

TEXTS = [f"bees visit flower number {i} and bring back nectar" for i in range(12)]


def run_while_busy(
    sup: Supervisor, calls: list[Callable[[], Any]], queued: int | None = None, role: str = "embed"
) -> list[Any]:
    """Hold the role's worker with a 1.5 s debug sleep, queue ``calls`` from threads
    meanwhile, and return each call's result (or the exception it raised)."""
    results: list[Any] = [None] * len(calls)
    blocker = sup.submit(role, DebugRequest(id=0, action="sleep", seconds=1.5, role=role))
    wait_until(lambda: sup.role_status(role).in_flight == 1, what="worker busy")

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    expected = len(calls) if queued is None else queued
    wait_until(lambda: sup.role_status(role).queued >= expected, timeout=20, what="queued")
    blocker.next_frame(30)
    for thread in threads:
        thread.join(60)
    return results


@pytest.fixture
def embed_sup(make_config: Callable[..., SupervisorConfig]) -> Any:
    with Supervisor(make_config({"embed": {}})) as sup:
        yield sup


def test_coalesced_results_equal_separate_results(embed_sup: Supervisor) -> None:
    separate = [embed_sup.embed([text])[0] for text in TEXTS]
    before = dict(embed_sup.status()[0].batch_sizes)
    results = run_while_busy(embed_sup, [lambda t=t: embed_sup.embed([t]) for t in TEXTS])
    after = embed_sup.status()[0].batch_sizes
    assert after.get("8-15", 0) == before.get("8-15", 0) + 1, after  # one batch of 12
    for got, want in zip(results, separate, strict=True):
        assert isinstance(got, np.ndarray), got
        cosine = float(got[0] @ want) / float(np.linalg.norm(got[0]) * np.linalg.norm(want))
        assert cosine >= 0.999
        assert np.abs(got[0] - want).max() < 5e-3  # batch-shape float noise only


def test_a_bad_text_in_a_merged_batch_fails_only_its_caller(embed_sup: Supervisor) -> None:
    separate = [embed_sup.embed([text])[0] for text in TEXTS[:4]]
    calls: list[Callable[[], Any]] = [lambda t=t: embed_sup.embed([t]) for t in TEXTS[:4]]
    calls.insert(2, lambda: embed_sup.embed(["fine", "word " * 3000]))  # over the context
    calls.insert(0, lambda: embed_sup.embed([TEXTS[0]], normalize=False))  # other options
    results = run_while_busy(embed_sup, calls)
    assert isinstance(results[3], InvalidRequest) and "text 1 is" in str(results[3])
    good = [r for i, r in enumerate(results) if i not in (0, 3)]
    for got, want in zip(good, separate, strict=True):
        assert np.abs(got[0] - want).max() < 5e-3
    raw = results[0][0]
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3  # its own options were kept
    assert np.abs(raw / np.linalg.norm(raw) - separate[0]).max() < 5e-3


def test_each_merged_caller_keeps_its_own_deadline(embed_sup: Supervisor) -> None:
    quick = lambda: embed_sup.embed([TEXTS[0]], timeout=0.5)  # noqa: E731 - expires queued
    patient = lambda: embed_sup.embed([TEXTS[1]], timeout=60)  # noqa: E731
    results = run_while_busy(embed_sup, [quick, patient, patient], queued=2)
    assert isinstance(results[0], WorkerTimeout)
    reference = embed_sup.embed([TEXTS[1]])[0]
    for got in results[1:]:
        assert np.abs(got[0] - reference).max() < 5e-3


# ---------------------------------------------------------------- rank rerank

QUERIES = ["what do bees make", "rust code", "cats and dogs", "sweet honey", "rain", "sun"]
DOCS = ["bees make honey", "rust code", "the cat and the dog", "honey is sweet", "sun and rain"]


@pytest.fixture
def rerank_sup(make_config: Callable[..., SupervisorConfig], tiny_reranker: str) -> Any:
    with Supervisor(make_config({"rerank": {"model": tiny_reranker, "n_ctx": 256}})) as sup:
        yield sup


def test_coalesced_rank_scores_equal_each_pair_decoded_alone(
    rerank_sup: Supervisor, tiny_reranker: str
) -> None:
    from test_rerank import rank_reference

    before = dict(rerank_sup.role_status("rerank").batch_sizes)
    calls = [lambda q=q: rerank_sup.rerank(q, DOCS) for q in QUERIES]
    results = run_while_busy(rerank_sup, calls, role="rerank")
    after = rerank_sup.role_status("rerank").batch_sizes
    assert after.get("16-31", 0) == before.get("16-31", 0) + 1, after  # 6 calls x 5 docs, once
    for query, items in zip(QUERIES, results, strict=True):
        assert isinstance(items, list), items
        reference, _ = rank_reference(tiny_reranker, 256, query, DOCS)
        got = {item.index: item.score for item in items}
        assert sorted(got) == list(range(len(DOCS)))
        for index, want in enumerate(reference):
            assert abs(got[index] - want) <= 1e-3, (query, index, got[index], want)


def test_a_bad_document_in_a_merged_rerank_fails_only_its_caller(
    rerank_sup: Supervisor, tiny_reranker: str
) -> None:
    from test_rerank import rank_reference

    calls: list[Callable[[], Any]] = [lambda q=q: rerank_sup.rerank(q, DOCS) for q in QUERIES[:3]]
    calls.insert(1, lambda: rerank_sup.rerank("bees", ["fine", "honey " * 400]))  # too long
    calls.append(lambda: rerank_sup.rerank("bees", DOCS, top_n=2, return_documents=True))
    results = run_while_busy(rerank_sup, calls, role="rerank")
    assert isinstance(results[1], InvalidRequest) and "document 1 with the query" in str(results[1])
    for query, items in zip(QUERIES[:3], [results[0], *results[2:4]], strict=True):
        reference, _ = rank_reference(tiny_reranker, 256, query, DOCS)
        assert all(abs(item.score - reference[item.index]) <= 1e-3 for item in items)
    top = results[4]
    assert len(top) == 2 and all(item.document == DOCS[item.index] for item in top)
    assert top[0].score >= top[1].score
