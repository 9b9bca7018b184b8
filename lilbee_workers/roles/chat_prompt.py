"""The tokens and stop strings a chat or completion request generates from, built exactly
as llama-cpp-python builds them for a solo call, so a batched stream starts from the same
prompt as ``create_chat_completion`` / ``create_completion`` would.

Chat: the model's chat handler (its GGUF template, or the configured format) runs against
a stand-in ``Llama`` that records the ``create_completion`` call it makes instead of
generating: the prompt tokens and the stop strings the template adds. Nothing of the real
``Llama`` is changed, so this is safe beside a running generation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lilbee_workers.errors import InvalidRequest

if TYPE_CHECKING:
    from llama_cpp import Llama


class _Recorded(Exception):
    """Raised by the stand-in to stop the chat handler once it asked for a completion."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        super().__init__("recorded")
        self.arguments = arguments


class _RecordingLlama:
    """Just enough of a ``Llama`` for a chat handler: it tokenizes with the real model and
    records the completion it is asked for."""

    def __init__(self, llm: Llama) -> None:
        self._llm = llm
        self.verbose = False
        self.model_path = llm.model_path
        self.metadata = llm.metadata

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._llm.tokenize(text, add_bos=add_bos, special=special)

    def create_completion(self, **arguments: Any) -> Any:
        raise _Recorded(arguments)


def chat_prompt(
    llm: Llama, messages: list[dict[str, Any]], stop: list[str]
) -> tuple[list[int], list[str]]:
    """The prompt tokens of ``messages`` under the model's chat template, and the stop
    strings (``stop`` plus the template's own)."""
    from llama_cpp import llama_chat_format

    handler = (
        llm.chat_handler
        or llm._chat_handlers.get(llm.chat_format or "")
        or llama_chat_format.get_chat_completion_handler(llm.chat_format or "")
    )
    try:
        handler(llama=_RecordingLlama(llm), messages=messages, stop=list(stop))  # type: ignore[arg-type]
    except _Recorded as recorded:
        prompt = recorded.arguments["prompt"]
        stops = recorded.arguments.get("stop") or []
        tokens = prompt if isinstance(prompt, list) else completion_tokens(llm, prompt)
        return [int(t) for t in tokens], [stops] if isinstance(stops, str) else list(stops)
    raise InvalidRequest("the chat template produced no prompt", param="messages")


def completion_tokens(llm: Llama, prompt: str) -> list[int]:
    """A raw prompt's tokens as ``create_completion`` makes them (its BOS/EOS rules)."""
    model = llm._model
    bos = model.token_cls() if model.token_cls() != -1 else llm.token_bos()
    sep = model.token_sep()
    head = [] if not model.add_bos_token() or bos == -1 else [bos]
    tail = (
        [] if not model.add_eos_token() and sep == -1 else [sep if sep != -1 else llm.token_eos()]
    )
    body = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
    return head + body + tail
