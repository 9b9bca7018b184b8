"""Continuous batching: many generation streams on one model, one ``llama_decode`` per step.

Each step carries one new token for every running stream plus a chunk of the prompts of
newly admitted ones (bounded by ``step_tokens``, so a long prompt delays the running
streams by one chunk's time at most). Each stream has its own sequence id in the KV cache
and its own sampler chain; a finished or cancelled stream's cells are freed at the next
token boundary and its slot takes the next waiting stream.

Worker side only: it knows nothing of frames or the parent. One thread steps it;
``admit`` and ``cancel`` may come from any thread (they take effect at the next step)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from lilbee_workers.errors import InvalidRequest, ModelError
from lilbee_workers.roles.batch_stream import (
    FinishReason,
    Sampling,
    Stream,
    StreamEvent,
    TokenText,
    make_sampler,
)


class BatchedGenerator:
    """One ``llama_context`` with a sequence per stream, over a model loaded elsewhere.

    It makes its own context (``n_seq_max`` and the KV cache size depend on ``streams``,
    which ``Llama`` cannot set) but shares the model, so N streams cost one copy of the
    weights; ``owner`` (e.g. the ``Llama``) is kept alive as long as this object.

    ``kv_unified`` false (the default) gives each stream its own KV cells: measured
    closer to solo answers than a shared cache, at the same speed. ``row_multiple`` > 1
    pads every step (and its logits rows) with throw-away rows up to a multiple of it,
    and ``prefill_apart`` decodes prompt chunks in a call of their own: measuring knobs;
    neither made greedy answers independent of the companions on the CPU build measured
    (docs/performance.md, "Many streams on one model"), and padding costs speed."""

    def __init__(
        self,
        model: Any,
        *,
        streams: int,
        stream_ctx: int,
        step_tokens: int = 64,
        row_multiple: int = 1,
        kv_unified: bool = False,
        prefill_apart: bool = False,
        n_threads: int | None = None,
        owner: object = None,
    ) -> None:
        import llama_cpp as L

        if streams < 1 or row_multiple < 1 or step_tokens < streams + 1:
            raise ValueError("need streams >= 1, row_multiple >= 1, step_tokens > streams")
        self.streams, self.stream_ctx, self.step_tokens = streams, stream_ctx, step_tokens
        self.row_multiple, self.prefill_apart = row_multiple, prefill_apart
        self._owner, self._model = owner, model
        self._vocab = L.llama_model_get_vocab(model)
        # The throw-away rows' sequences, emptied after every step: one in a unified
        # cache; one per row with per-sequence caches, where llama.cpp splits a step
        # into ubatches of equally many tokens per sequence.
        self._pad_seqs = list(range(streams, streams + (1 if kv_unified else row_multiple)))
        self._pad_token = max(L.llama_vocab_bos(self._vocab), 0)
        capacity = step_tokens + 2 * row_multiple
        self._ctx = L.llama_init_from_model(
            model, self._context_params(capacity, kv_unified, n_threads)
        )
        if not self._ctx:
            raise ModelError("llama.cpp could not make a context for batched generation")
        self._memory = L.llama_get_memory(self._ctx)
        self._batch = L.llama_batch_init(capacity, 0, 1)
        self._slots: list[Stream | None] = [None] * streams
        self._waiting: deque[Stream] = deque()
        self._ids: set[int] = set()
        self._cancels: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False

    def _context_params(self, capacity: int, kv_unified: bool, n_threads: int | None) -> Any:
        import llama_cpp as L

        params = L.llama_context_default_params()
        sequences = self.streams + len(self._pad_seqs)
        cells = self.streams * self.stream_ctx + capacity
        params.n_ctx = cells if kv_unified else sequences * max(self.stream_ctx, capacity)
        params.n_batch = params.n_ubatch = capacity
        params.n_seq_max = sequences
        params.n_outputs_max_per_seq = 0  # the padding sequence may ask several rows
        params.kv_unified = kv_unified
        params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as ``Llama`` opens it
        if n_threads is not None:
            params.n_threads = params.n_threads_batch = n_threads
        return params

    @classmethod
    def from_llama(cls, llm: Any, **options: Any) -> BatchedGenerator:
        """Batch over the model a ``Llama`` already loaded (one copy of the weights)."""
        options.setdefault("n_threads", llm.context_params.n_threads)
        return cls(llm.model, owner=llm, **options)

    # -- the API a worker loop uses --------------------------------------------------

    def admit(self, stream_id: int, prompt: list[int], sampling: Sampling) -> None:
        """Queue a stream; it starts at the first step with a free slot. Bad input
        raises ``InvalidRequest`` here and touches nothing else."""
        sampling.check()
        if not prompt:
            raise InvalidRequest("prompt must not be empty")
        if len(prompt) >= self.stream_ctx:
            raise InvalidRequest(
                f"prompt is too long: {len(prompt)} tokens, a stream's context holds "
                f"{self.stream_ctx} (prompt and reply together)"
            )
        with self._lock:
            if stream_id in self._ids:
                raise InvalidRequest(f"stream {stream_id} is already running")
            self._ids.add(stream_id)
            self._waiting.append(
                Stream(stream_id, list(prompt), sampling, TokenText(self._vocab, sampling.stop))
            )

    def cancel(self, stream_id: int) -> None:
        """Stop a stream at the next token boundary (any thread may call this)."""
        with self._lock:
            if stream_id in self._ids:
                self._cancels.add(stream_id)

    @property
    def context(self) -> Any:
        """The ``llama_context`` the streams decode in."""
        return self._ctx

    @property
    def running(self) -> int:
        return sum(slot is not None for slot in self._slots)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        return not self.running and not self._waiting

    def step(self) -> list[StreamEvent]:
        """One ``llama_decode`` (two with ``prefill_apart``): returns what each stream
        produced (text pieces and finishes). A failed decode raises ``ModelError``;
        the caller then fails every stream and closes this generator (its KV state
        is no longer known)."""
        if self._closed:
            raise ModelError("the batched generator is closed")
        events = self._apply_cancels()
        self._start_waiting()
        if self.prefill_apart:
            self._batch.n_tokens = 0
            events += self._decode(self._add_next_tokens())
            self._batch.n_tokens = 0
            events += self._decode(self._add_prompt_chunks(streams=1))
        else:
            self._batch.n_tokens = 0
            outputs = self._add_next_tokens()
            events += self._decode(outputs + self._add_prompt_chunks(streams=self.streams))
        return events

    def _decode(self, outputs: list[tuple[Stream, int]]) -> list[StreamEvent]:
        """Decode the rows in the batch (padded), then sample each stream given logits."""
        import llama_cpp as L

        if self._batch.n_tokens == 0:
            return []
        self._pad()
        status = L.llama_decode(self._ctx, self._batch)
        for seq in self._pad_seqs:
            L.llama_memory_seq_rm(self._memory, seq, -1, -1)
        if status != 0:
            raise ModelError(f"llama_decode failed with status {status} in a batched step")
        events = []
        for stream, index in outputs:
            token = L.llama_sampler_sample(stream.sampler, self._ctx, index)
            events.append(self._take_token(stream, token))
        return events

    # -- inside a step ---------------------------------------------------------------

    def _apply_cancels(self) -> list[StreamEvent]:
        with self._lock:
            cancels, self._cancels = self._cancels, set()
            events = []
            for stream in [s for s in self._waiting if s.stream_id in cancels]:
                self._waiting.remove(stream)
                self._ids.discard(stream.stream_id)
                events.append(StreamEvent(stream.stream_id, "", "cancelled", len(stream.prompt)))
        for slot in list(self._slots):
            if slot is not None and slot.stream_id in cancels:
                events.append(self._finish(slot, "cancelled", ""))
        return events

    def _start_waiting(self) -> None:
        with self._lock:
            for seq, slot in enumerate(self._slots):
                if slot is None and self._waiting:
                    stream = self._waiting.popleft()
                    stream.seq, stream.sampler = seq, make_sampler(stream.sampling)
                    self._slots[seq] = stream

    def _add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        batch, row = self._batch, self._batch.n_tokens
        batch.token[row], batch.pos[row], batch.n_seq_id[row] = token, pos, 1
        batch.seq_id[row][0], batch.logits[row] = seq, int(logits)
        batch.n_tokens += 1
        return int(row)

    def _add_next_tokens(self) -> list[tuple[Stream, int]]:
        """A row for every running stream's last sampled token (all get logits)."""
        outputs = []
        for stream in self._slots:
            if stream is not None and not stream.prefilling:
                outputs.append(
                    (stream, self._add(stream.last_token, stream.n_past, stream.seq, True))
                )
                stream.n_past += 1
        return outputs

    def _add_prompt_chunks(self, streams: int) -> list[tuple[Stream, int]]:
        """Prompt rows of up to ``streams`` prefilling streams, oldest slot first,
        within ``step_tokens`` for the step. Returns the streams whose prompt ends
        here (they get logits for their first token), with their row."""
        outputs = []
        for stream in [s for s in self._slots if s is not None and s.prefilling][:streams]:
            room = self.step_tokens - self._batch.n_tokens
            if room <= 0:
                break
            end = min(len(stream.prompt), stream.n_past + room)
            for pos in range(stream.n_past, end):
                row = self._add(stream.prompt[pos], pos, stream.seq, pos == len(stream.prompt) - 1)
            stream.n_past = end
            if not stream.prefilling:
                outputs.append((stream, row))
        return outputs

    def _pad(self) -> None:
        """Fill the step up to a multiple of ``row_multiple`` rows, and its logits
        rows too, with rows of the padding sequence (removed again after the step)."""
        multiple = self.row_multiple
        if multiple == 1:
            return
        rows = self._batch.n_tokens
        outputs = sum(self._batch.logits[i] != 0 for i in range(rows))
        extra, extra_outputs = -rows % multiple, -outputs % multiple
        while extra < extra_outputs:
            extra += multiple
        seqs = self._pad_seqs
        for row in range(extra):
            if len(seqs) == 1:
                self._add(self._pad_token, row, seqs[0], row < extra_outputs)
            else:
                self._add(
                    self._pad_token, row // len(seqs), seqs[row % len(seqs)], row < extra_outputs
                )

    def _take_token(self, stream: Stream, token: int) -> StreamEvent:
        import llama_cpp as L

        if L.llama_vocab_is_eog(self._vocab, token):
            return self._finish(stream, "stop", "", token)
        stream.completion += 1
        stream.last_token = token
        text, stopped = stream.text.add(token)
        if stopped:
            return self._finish(stream, "stop", text, token)
        limit = stream.sampling.max_tokens
        if (limit is not None and stream.completion >= limit) or stream.n_past >= self.stream_ctx:
            return self._finish(stream, "length", text + stream.text.flush(), token)
        return StreamEvent(
            stream.stream_id, text, completion_tokens=stream.completion, tokens=(token,)
        )

    def _finish(
        self, stream: Stream, reason: FinishReason, text: str, token: int | None = None
    ) -> StreamEvent:
        """Free the stream's cells, sampler and slot; its last event."""
        import llama_cpp as L

        L.llama_memory_seq_rm(self._memory, stream.seq, -1, -1)
        L.llama_sampler_free(stream.sampler)
        self._slots[stream.seq] = None
        with self._lock:
            self._ids.discard(stream.stream_id)
            self._cancels.discard(stream.stream_id)
        if reason == "stop" and not text:
            text = stream.text.flush()
        sampled = () if token is None else (token,)
        return StreamEvent(
            stream.stream_id, text, reason, len(stream.prompt), stream.completion, sampled
        )

    def close(self) -> None:
        """Free the samplers, the batch and the context (the model stays its owner's)."""
        import llama_cpp as L

        if self._closed:
            return
        self._closed = True
        for stream in self._slots:
            if stream is not None:
                L.llama_sampler_free(stream.sampler)
        self._slots = [None] * self.streams
        self._waiting.clear()
        L.llama_batch_free(self._batch)
        L.llama_free(self._ctx)

    def __enter__(self) -> BatchedGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
