"""One stream of a batched generation: its sampling settings, its sampler chain, and the
text it has produced so far (whole UTF-8 characters only, stop strings held back until
they can no longer start a match). Worker side; pure Python plus llama.cpp's samplers."""

from __future__ import annotations

import codecs
import ctypes
from dataclasses import dataclass
from typing import Any, Literal

from lilbee_workers.roles.base import check_sampling, check_seed

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Sampling:
    """How one stream picks its tokens. The defaults are llama-cpp-python's
    ``create_completion`` defaults, so one stream alone samples as a solo call does."""

    temperature: float = 0.0
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()

    def check(self) -> None:
        """Raise ``InvalidRequest`` for settings llama.cpp would misread."""
        check_sampling(self.max_tokens, self.temperature, self.top_p)
        check_seed(self.seed)


@dataclass(frozen=True)
class StreamEvent:
    """What one step did for one stream: the token it sampled (none when cancelled),
    new text (may be empty) and, on its last event, why it finished and its prompt's token
    count (``completion_tokens`` is the count so far on every event). Invalid UTF-8
    from the model is dropped, as llama-cpp-python drops it."""

    stream_id: int
    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: tuple[int, ...] = ()


def make_sampler(sampling: Sampling) -> Any:
    """A llama.cpp sampler chain built as llama-cpp-python builds it (greedy at
    temperature 0; else top-k, top-p, min-p, temperature, seeded draw), so a seeded
    stream draws the tokens a solo ``create_completion`` with that seed draws."""
    import llama_cpp as L

    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    if sampling.temperature == 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        return chain
    seed = L.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed
    for sampler in (
        L.llama_sampler_init_top_k(sampling.top_k),
        L.llama_sampler_init_typical(1.0, 1),
        L.llama_sampler_init_top_p(sampling.top_p, 1),
        L.llama_sampler_init_min_p(sampling.min_p, 1),
        L.llama_sampler_init_temp(sampling.temperature),
        L.llama_sampler_init_dist(seed),
    ):
        L.llama_sampler_chain_add(chain, sampler)
    return chain


class TokenText:
    """Turns one stream's tokens into text pieces: bytes of a character split over two
    tokens wait for the rest, and text that may be the start of a stop string waits
    until it cannot be (so a stop string never reaches the caller)."""

    def __init__(self, vocab: Any, stop: tuple[str, ...]) -> None:
        self._vocab = vocab
        self._stop = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._buffer = ctypes.create_string_buffer(256)
        self._text = ""
        self._sent = 0

    def piece(self, token: int) -> bytes:
        import llama_cpp as L

        n = L.llama_token_to_piece(self._vocab, token, self._buffer, len(self._buffer), 0, False)
        if n < 0:  # a piece longer than the buffer: grow it once to the size asked
            self._buffer = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, self._buffer, -n, 0, False)
        return self._buffer.raw[:n]

    def add(self, token: int) -> tuple[str, bool]:
        """Add a token; return the text now safe to send and whether a stop string
        was completed (then the text ends just before it)."""
        self._text += self._decoder.decode(self.piece(token), final=False)
        start = self._sent
        found = [i for s in self._stop if (i := self._text.find(s, start)) >= 0]
        if found:
            end = min(found)
            self._text = self._text[:end]
            self._sent = end
            return self._text[start:end], True
        end = len(self._text) - self._held_back()
        self._sent = max(end, start)
        return self._text[start : self._sent], False

    def flush(self) -> str:
        """The rest of the text, at the end of the stream."""
        self._text += self._decoder.decode(b"", final=True)
        start, self._sent = self._sent, len(self._text)
        return self._text[start:]

    def _held_back(self) -> int:
        """How many trailing characters might be the start of a stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:size]):
                    longest = size
                    break
        return longest


@dataclass
class Stream:
    """A stream's state inside the generator: its prompt, how far it is, its sampler."""

    stream_id: int
    prompt: list[int]
    sampling: Sampling
    text: TokenText
    seq: int = -1
    n_past: int = 0
    completion: int = 0
    last_token: int = -1
    sampler: Any = None

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)
