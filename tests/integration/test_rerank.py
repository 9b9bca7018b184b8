"""rerank through real worker subprocesses: a generated cross-encoder (RANK pooling),
and the generative fallback on gemma 3 270M."""

from __future__ import annotations

import itertools
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import wait_until
from lilbee_workers import (
    InvalidRequest,
    ModelError,
    Supervisor,
    SupervisorConfig,
    WorkerUnavailable,
)
from lilbee_workers.roles.rerank import GENERATIVE_PROMPT, p_yes

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


MANY_DOCS = [
    " ".join(words)
    for words in (
        ("bees", "make", "honey"),
        ("rust", "code"),
        ("the", "cat", "and", "the", "dog"),
        ("honey", "is", "sweet"),
        ("sun", "and", "rain"),
        ("a", "queen", "bee", "in", "the", "hive"),
        ("python", "code", "is", "sweet"),
        ("flowers", "make", "nectar"),
        ("worker", "bees", "gather", "nectar", "from", "flowers"),
        ("who", "makes", "the", "honey"),
    )
] * 3  # 30 pairs, ~240 tokens: with n_ctx 64 the worker needs several llama_decode calls


def rank_reference(
    model_path: str, n_ctx: int, query: str, docs: list[str]
) -> tuple[list[float], int]:
    """Each pair alone in its own ``llama_decode`` in this process, built as llama.cpp's
    server builds rerank pairs ([CLS] query [SEP] document [SEP]); the score is the one
    float llama.cpp writes for the sequence (element 0). Also the pairs' token total."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path,
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        verbose=False,
    )
    batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        cls, sep = llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_sep(vocab)
        query_tokens = llm.tokenize(query.encode(), add_bos=False)
        scores, total = [], 0
        for doc in docs:
            tokens = [cls, *query_tokens, sep, *llm.tokenize(doc.encode(), add_bos=False), sep]
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, True
            batch.n_tokens = len(tokens)
            total += len(tokens)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
            assert llama_cpp.llama_decode(llm.ctx, batch) == 0
            scores.append(float(llama_cpp.llama_get_embeddings_seq(llm.ctx, 0)[0]))
        return scores, total
    finally:
        llama_cpp.llama_batch_free(batch)
        llm.close()


def test_scores_spanning_several_decodes_equal_each_pair_decoded_alone(
    make_config: Callable[..., SupervisorConfig], tiny_reranker: str
) -> None:
    n_ctx, query = 64, "what do bees make"
    config = make_config({"rerank": {"model": tiny_reranker, "n_ctx": n_ctx}})
    with Supervisor(config) as sup:
        got = {item.index: item.score for item in sup.rerank(query, MANY_DOCS)}
    expected, total_tokens = rank_reference(tiny_reranker, n_ctx, query, MANY_DOCS)
    assert total_tokens > 2 * n_ctx  # the worker cannot have scored them in one decode
    scores = [got[i] for i in range(len(MANY_DOCS))]
    # Tolerance: a pair packed with others in one llama_decode differs from the same pair
    # decoded alone by up to 2.3e-4 here (llama.cpp's own batch-shape numerics: an
    # in-process packed decode of the worker's groups reproduces the worker bit for bit).
    # 1e-3 leaves room for that and stays far below the gap between distinct documents'
    # scores, so a score taken from another pair, or from past element 0, cannot pass.
    tolerance = 1e-3
    distinct = sorted(expected[: len(MANY_DOCS) // 3])  # the ten different documents
    assert min(b - a for a, b in itertools.pairwise(distinct)) > 10 * tolerance
    assert all(math.isfinite(x) for x in scores)
    assert scores == pytest.approx(expected, rel=0, abs=tolerance)


def test_rank_scores_read_only_element_0_of_each_sequence(
    monkeypatch: pytest.MonkeyPatch, tiny_reranker: str, tmp_path: Path
) -> None:
    """In process: the handler reads one float per sequence, never past element 0 (the
    rest of llama.cpp's buffer is memory past the real output), over several decodes."""
    import llama_cpp

    from lilbee_workers import RoleConfig
    from lilbee_workers.roles.base import RequestContext
    from lilbee_workers.roles.rerank import RerankHandler
    from lilbee_workers.transport.frames import RerankRequest, RerankResult

    role = RerankHandler(
        RoleConfig(model=tiny_reranker, n_ctx=64), tiny_reranker, str(tmp_path / "rerank.log")
    )
    role.load()
    reads: list[object] = []
    decodes: list[int] = []
    real_seq, real_decode = llama_cpp.llama_get_embeddings_seq, llama_cpp.llama_decode

    class ElementZeroOnly:
        def __init__(self, pointer: Any) -> None:
            self.pointer = pointer

        def __bool__(self) -> bool:
            return bool(self.pointer)

        def __getitem__(self, index: object) -> float:
            reads.append(index)
            assert index == 0, f"read {index!r} of a rank output: only element 0 is real"
            return float(self.pointer[0])

    def guarded_seq(ctx: Any, seq_id: int) -> ElementZeroOnly:
        return ElementZeroOnly(real_seq(ctx, seq_id))

    def counted_decode(ctx: Any, batch: Any) -> int:
        decodes.append(int(batch.n_tokens))
        return int(real_decode(ctx, batch))

    for module in (llama_cpp, llama_cpp.llama_cpp):
        monkeypatch.setattr(module, "llama_get_embeddings_seq", guarded_seq)
        monkeypatch.setattr(module, "llama_decode", counted_decode)
    try:
        request = RerankRequest(id=1, query="what do bees make", documents=MANY_DOCS)
        reply = role.handle(request, RequestContext(1, lambda frame: None, threading.Event()))
    finally:
        monkeypatch.undo()
        llama_cpp.llama_batch_free(role.batch)
        role.llm.close()
    assert isinstance(reply, RerankResult) and len(reply.results) == len(MANY_DOCS)
    assert len(decodes) >= 3 and max(decodes) <= 64
    assert reads == [0] * len(MANY_DOCS)


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
    before = rerank_sup.role_status("rerank").restarts
    pid = rerank_sup.worker_pid("rerank")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the request will sit in the worker's pipe

    def kill_once_in_flight() -> None:
        wait_until(lambda: rerank_sup.role_status("rerank").in_flight == 1, what="in flight")
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_once_in_flight)
    killer.start()
    result = rerank_sup.rerank("what do bees make", DOCS)
    killer.join()
    assert [(i.index, i.score) for i in result] == [(i.index, i.score) for i in reference]
    assert rerank_sup.role_status("rerank").restarts == before + 1
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


def generative_reference(model_path: str, n_ctx: int, query: str, docs: list[str]) -> list[float]:
    """P(yes)/(P(yes)+P(no)) per document, computed here with an in-process ``Llama``
    opened with ``logits_all=True`` (its own logits buffer, not the worker's read)."""
    from llama_cpp import Llama

    llm = Llama(model_path, n_ctx=n_ctx, logits_all=True, verbose=False)
    try:
        yes = llm.tokenize(b" yes", add_bos=False)[0]
        no = llm.tokenize(b" no", add_bos=False)[0]
        scores = []
        for doc in docs:
            prompt = GENERATIVE_PROMPT.format(query=query, document=doc)
            tokens = llm.tokenize(prompt.encode(), add_bos=True)
            llm.reset()
            llm.eval(tokens)
            last = llm.scores[len(tokens) - 1].astype(np.float64)
            scores.append(float(1.0 / (1.0 + np.exp(last[no] - last[yes]))))
        return scores
    finally:
        llm.close()


def test_generative_scores_equal_p_yes_computed_directly(
    make_config: Callable[..., SupervisorConfig], model_path: str
) -> None:
    query = "what do bees make"
    docs = ["honey is made by bees", "rust is a programming language", "the sky is blue"]
    config = make_config(
        {"rerank": {"model": model_path, "rerank_mode": "generative", "n_ctx": 256}}
    )
    with Supervisor(config) as sup:
        first = {item.index: item.score for item in sup.rerank(query, docs)}
        # Reversed order, then one document alone: a score must not depend on what the
        # worker evaluated before it.
        again = {item.index: item.score for item in sup.rerank(query, docs[::-1])}
        [alone] = sup.rerank(query, [docs[1]])
    expected = generative_reference(model_path, 256, query, docs)
    got = [first[i] for i in range(len(docs))]
    assert got == pytest.approx(expected, abs=1e-4)
    assert [again[len(docs) - 1 - i] for i in range(len(docs))] == pytest.approx(expected, abs=1e-4)
    assert alone.score == pytest.approx(expected[1], abs=1e-4)
    assert first[0] > first[1]  # honey beats rust for "what do bees make"
    assert len(set(got)) == len(got)  # not one constant (the 0.5-for-everything bug)


def test_generative_refuses_a_model_whose_yes_and_no_share_a_first_token(
    make_config: Callable[..., SupervisorConfig], tmp_path: Path
) -> None:
    from tiny_models import write_tiny_reranker

    # No letters in the vocabulary: " yes" and " no" both tokenize to [UNK].
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "\u2581bee", "\u2581honey"]
    model = write_tiny_reranker(tmp_path / "no-letters.gguf", rank_head=False, vocab=vocab)
    config = make_config({"rerank": {"model": str(model), "rerank_mode": "generative"}})
    with Supervisor(config) as sup:
        [status] = sup.status()
        assert status.state == "failed"
        assert '" yes" and " no" start with the same token (1)' in status.last_exit
        with pytest.raises(WorkerUnavailable, match="same token"):
            sup.rerank("bees", ["honey"])


@pytest.mark.parametrize(
    ("yes", "no"), [(math.nan, 0.0), (0.0, math.inf), (-math.inf, 1.0)], ids=["nan", "inf", "-inf"]
)
def test_non_finite_logits_are_a_model_error(yes: float, no: float) -> None:
    with pytest.raises(ModelError, match="non-finite logits"):
        p_yes(yes, no)


def test_p_yes_is_the_two_way_softmax_even_for_huge_logits() -> None:
    assert p_yes(2.0, 1.0) == pytest.approx(math.exp(2) / (math.exp(2) + math.exp(1)))
    assert p_yes(1000.0, 0.0) == 1.0 and p_yes(0.0, 1000.0) == 0.0  # no overflow


def test_truncation_fits_the_configured_context_not_llama_cpps_rounded_one(
    make_config: Callable[..., SupervisorConfig], tiny_reranker: str
) -> None:
    """Found by the hostile-input property test: with n_ctx 128, llama.cpp rounds its own
    context up (256), and a pair truncated to that overflowed the 128-token batch
    (``NULL pointer access`` → ModelError)."""
    config = make_config({"rerank": {"model": tiny_reranker, "n_ctx": 128}})
    long_document = "bee " * 1000
    with Supervisor(config) as sup:
        pid = sup.worker_pid("rerank")
        [item] = sup.rerank("bees", [long_document], truncate=True)
        assert math.isfinite(item.score)
        with pytest.raises(InvalidRequest, match="over the context of 128"):
            sup.rerank("bees", [long_document])
        assert sup.worker_pid("rerank") == pid
        # The truncated document scores as the longest one that fits untruncated does.
        for words in range(128, 0, -1):
            try:
                [same] = sup.rerank("bees", ["bee " * words])
                break
            except InvalidRequest:
                continue
        assert words > 100 and abs(same.score - item.score) < 1e-4
