"""Merged batches never hurt a batch-mate (issue 18, items 1 and 2), with gemma 270M in
real workers: a request that kills its worker is retried alone and named poison alone,
and a batch never outgrows ``max_frame_bytes`` in either direction. Each innocent
caller's vectors are checked against llama-cpp-python run directly on its texts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from test_coalescing import run_while_busy

from lilbee_workers import Supervisor, SupervisorConfig, WorkerCrashed

SHORT = "bees make honey from nectar"
AIRY = "bees\n" + "\n" * 5000  # 5 KB of text in 164 tokens: bytes, not compute


@pytest.fixture(scope="module")
def direct_embed(model_path: str) -> Iterator[Callable[[list[str]], Any]]:
    """gemma 270M embedding in this process, one text per call (mean pooling, as the
    worker resolves it), normalised: the solo reference."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=model_path, embedding=True, pooling_type=1, n_ctx=1024, n_batch=1024,
        n_ubatch=1024, verbose=False,
    )  # fmt: skip

    def embed(texts: list[str]) -> Any:
        return np.asarray([llm.embed([text], normalize=True)[0] for text in texts])

    yield embed
    llm.close()


def assert_solo_answer(got: Any, want: Any) -> None:
    """Equal to the text embedded alone, within batch-shape float noise (facts.md)."""
    assert isinstance(got, np.ndarray), got
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 5e-3
    cosines = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.999


def test_a_poison_request_in_a_merged_batch_fails_alone(
    make_config: Callable[..., SupervisorConfig], direct_embed: Callable[[list[str]], Any]
) -> None:
    """Caller A's 200 long texts overrun kill_after_s (8 s), merged or alone; caller B's
    one short text takes a fraction of a second alone (seconds on a crowded machine).
    Both queued behind a busy worker run as one batch, which is killed at the deadline:
    B is retried alone and answered, A is the only one told "poison request?"."""
    long_texts = [f"text {i}: " + "bees carry nectar back to the hive " * 100 for i in range(200)]
    config = make_config({"embed": {"kill_after_s": 8.0, "max_restarts": 100}})
    with Supervisor(config) as sup:
        before = sup.role_status("embed").batch_sizes.copy()
        calls = [
            lambda: sup.embed(long_texts, truncate=True),
            lambda: sup.embed([SHORT]),
        ]
        poison, innocent = run_while_busy(sup, calls)
        status = sup.role_status("embed")
    assert isinstance(poison, WorkerCrashed), poison
    assert "2 times (poison request?)" in poison.message and "kill_after_s" in poison.message
    assert not poison.retryable
    assert_solo_answer(innocent, direct_embed([SHORT]))
    assert status.retried == 2 and status.restarts == 2  # the batch, then A alone
    assert status.batch_sizes.get("128-255", 0) == before.get("128-255", 0)  # never answered


BIG_REQUESTS = [[f"{i} " + AIRY] for i in range(2)]  # 5 KB of text each
BIG_REPLIES = [[f"{SHORT} {i} {j}" for j in range(2)] for i in range(2)]  # 2 x 2.5 KB floats


@pytest.mark.parametrize("group", [BIG_REQUESTS, BIG_REPLIES], ids=["requests", "replies"])
def test_merged_calls_never_outgrow_the_frame_cap(
    make_config: Callable[..., SupervisorConfig],
    direct_embed: Callable[[list[str]], Any],
    group: list[list[str]],
) -> None:
    """With max_frame_bytes = 8 KiB: two callers whose requests (5 KB of text each) fit
    alone but not together, or whose replies (2 vectors x 640 floats, 5.1 KB) fit alone
    but not together. Merged blindly, both were answered "request too large" or "reply
    too large"; each must get its solo answer."""
    config = make_config({"embed": {}}, max_frame_bytes=8 * 1024)
    with Supervisor(config) as sup:
        calls = [lambda texts=texts: sup.embed(texts) for texts in group]
        results = run_while_busy(sup, calls)
    for got, texts in zip(results, group, strict=True):
        assert_solo_answer(got, direct_embed(texts))
