"""embed and chat on the real gemma 3 270M model, through real worker subprocesses."""

from __future__ import annotations

import numpy as np
import pytest

from lilbee_workers import InvalidRequest, Supervisor
from lilbee_workers.transport.frames import ChatMessage


def test_embed_returns_a_vector_of_model_dimension_per_text(sup: Supervisor) -> None:
    texts = ["the cat sat on the mat", "a dog in the fog", "bees make honey"]
    vectors = sup.embed(texts)
    assert vectors.shape == (3, 640)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert sup.worker_pid("embed") not in (None, __import__("os").getpid())


def test_embed_is_deterministic_and_batch_independent(sup: Supervisor) -> None:
    batch = sup.embed(["alpha", "beta gamma", "delta"])
    single = sup.embed(["beta gamma"])
    assert np.allclose(batch[1], single[0], atol=1e-4)


def test_embed_normalize_off_keeps_raw_scale(sup: Supervisor) -> None:
    raw = sup.embed(["scale check"], normalize=False)
    norm = float(np.linalg.norm(raw[0]))
    assert abs(norm - 1.0) > 1e-3
    assert np.allclose(raw[0] / norm, sup.embed(["scale check"])[0], atol=1e-4)


def test_embed_empty_list_is_an_empty_array(sup: Supervisor) -> None:
    assert sup.embed([]).shape == (0, 640)


def test_text_longer_than_context_is_refused_naming_it_or_truncated(sup: Supervisor) -> None:
    long_text = "word " * 3000  # far over n_ctx=1024
    with pytest.raises(InvalidRequest, match="text 1 is .* tokens, over the context"):
        sup.embed(["fine", long_text])
    vectors = sup.embed(["fine", long_text], truncate=True)
    assert vectors.shape == (2, 640)
    assert sup.embed(["still serving"]).shape == (1, 640)


def test_embed_wrong_types_are_invalid_requests(sup: Supervisor) -> None:
    with pytest.raises(InvalidRequest, match="list of strings"):
        sup.embed("not a list")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=r"texts\[1\] must be a string"):
        sup.embed(["ok", 3])  # type: ignore[list-item]


def test_chat_streams_text_and_ends_with_finish_reason(sup: Supervisor) -> None:
    stream = sup.chat("Name three colors.", max_tokens=12, temperature=0.0, seed=7)
    chunks = list(stream)
    result = stream.result
    assert result is not None
    assert len(chunks) >= 2
    assert "".join(chunks) == result.text
    assert result.finish_reason in ("stop", "length")
    assert result.prompt_tokens > 3
    assert 0 < result.completion_tokens <= 12
    assert result.chunks == len(chunks)


def test_chat_hits_max_tokens_with_length(sup: Supervisor) -> None:
    result = sup.chat("Count: one, two, three,", max_tokens=5, temperature=0.0).collect()
    assert result.finish_reason == "length"
    assert result.completion_tokens == 5


def test_chat_with_seed_and_zero_temperature_is_repeatable(sup: Supervisor) -> None:
    messages = [
        ChatMessage(role="system", content="You are terse."),
        {"role": "user", "content": "What is honey?"},
    ]
    first = sup.chat(messages, max_tokens=16, temperature=0.0, seed=1).text()
    second = sup.chat(messages, max_tokens=16, temperature=0.0, seed=1).text()
    assert first == second and first


def test_chat_stop_sequence_ends_generation(sup: Supervisor) -> None:
    base = sup.chat("List: apple, banana, cherry,", max_tokens=20, temperature=0.0).text()
    assert "," in base
    stopped = sup.chat(
        "List: apple, banana, cherry,", max_tokens=20, temperature=0.0, stop=[","]
    ).collect()
    assert "," not in stopped.text
    assert stopped.finish_reason == "stop"


def test_chat_reports_the_template_it_used(sup: Supervisor) -> None:
    status = {s.role: s for s in sup.status()}
    assert status["chat"].chat_template == "fallback:gemma"  # gemma 270M ships none


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"messages": []}, "messages must not be empty"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role must be one of"),
        ({"messages": "hi", "max_tokens": -1}, "max_tokens must be > 0"),
        ({"messages": "hi", "temperature": float("nan")}, "temperature must be finite"),
        ({"messages": "hi", "top_p": 0.0}, "top_p must be in"),
        ({"messages": "hi", "seed": -5}, "seed must be in"),
    ],
)
def test_bad_chat_requests_are_invalid_and_the_worker_lives(
    sup: Supervisor, kwargs: dict[str, object], match: str
) -> None:
    pid = sup.worker_pid("chat")
    with pytest.raises(InvalidRequest, match=match):
        sup.chat(**kwargs).collect()  # type: ignore[arg-type]
    assert sup.worker_pid("chat") == pid


def test_prompt_longer_than_context_is_invalid_request(sup: Supervisor) -> None:
    pid = sup.worker_pid("chat")
    with pytest.raises(InvalidRequest, match="prompt is too long"):
        sup.chat("bee " * 3000, max_tokens=4).collect()
    assert sup.worker_pid("chat") == pid
    assert sup.chat("hello", max_tokens=2).collect().completion_tokens > 0


def test_status_counts_served_calls_and_latency(sup: Supervisor) -> None:
    before = {s.role: s for s in sup.status()}["embed"].served
    sup.embed(["count me"])
    after = {s.role: s for s in sup.status()}["embed"]
    assert after.served == before + 1
    assert after.p50_ms is not None and after.p50_ms > 0
    assert after.state == "ready" and after.rss_bytes > 10_000_000
