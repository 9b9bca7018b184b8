"""Raw-prompt generation (``complete``) on the chat role: what a base model is for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lilbee_workers import InvalidRequest, Supervisor


@pytest.fixture(scope="module")
def direct(model_path: str) -> Iterator[Any]:
    """gemma 3 270M in this process, opened as the chat worker opens it."""
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, n_ctx=1024, n_batch=2048, n_ubatch=512, verbose=False)
    yield llm
    llm.close()


def direct_text(llm: Any, prompt: str, **sampling: Any) -> str:
    llm.reset()
    return str(llm.create_completion(prompt, **sampling)["choices"][0]["text"])


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("Honey is made by", "bees"), ("Q: What colour is the sky?\nA:", "blue")],
)
def test_complete_continues_a_prompt_as_llama_cpp_does(
    sup: Supervisor, direct: Any, prompt: str, expected: str
) -> None:
    sampling: dict[str, Any] = {"max_tokens": 12, "temperature": 0.0, "seed": 1}
    stream = sup.complete(prompt, **sampling)
    chunks = list(stream)
    assert stream.result is not None
    assert "".join(chunks) == stream.result.text
    reference = direct_text(direct, prompt, top_p=0.95, **sampling)
    assert stream.result.text == reference
    assert expected in reference.lower()  # text a reader recognises, not babble
    assert stream.result.completion_tokens <= 12


def test_complete_does_not_depend_on_history(sup: Supervisor) -> None:
    texts = [sup.complete("Hi", max_tokens=16, temperature=0.0).text() for _ in range(2)]
    sup.chat("Hello there", max_tokens=4, temperature=0.0).text()  # something else between
    texts.append(sup.complete("Hi", max_tokens=16, temperature=0.0).text())
    assert texts[0] and len(set(texts)) == 1


def test_complete_refuses_bad_prompts_and_keeps_serving(sup: Supervisor) -> None:
    with pytest.raises(InvalidRequest, match="prompt must not be empty"):
        sup.complete("", max_tokens=4).text()
    with pytest.raises(InvalidRequest, match="too long|context"):
        sup.complete("word " * 3000, max_tokens=4).text()
    assert "bees" in sup.complete("Honey is made by", max_tokens=6, temperature=0.0).text()
