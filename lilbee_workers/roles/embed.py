"""The embed role: texts -> pooled embedding vectors, batched through llama.cpp."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from lilbee_workers.errors import InvalidRequest, ModelError
from lilbee_workers.limits import check_content
from lilbee_workers.roles.base import (
    LoadedModel,
    RequestContext,
    RoleHandler,
    decode_aborted,
    model_metadata,
    open_llama,
)
from lilbee_workers.transport.error_frames import from_frame, to_frame
from lilbee_workers.transport.frames import (
    BatchRequest,
    BatchResult,
    EmbedRequest,
    EmbedResult,
    ErrorFrame,
    Frame,
    Request,
)

if TYPE_CHECKING:
    from llama_cpp import Llama

_POOLING_BY_NAME = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}


def resolve_pooling(setting: str, model_path: str) -> int:
    """llama.cpp pooling type: the configured one, or (``auto``) the model's own,
    falling back to mean pooling for models that declare none (gemma, most LLMs)."""
    if setting != "auto":
        return _POOLING_BY_NAME[setting]
    arch = model_metadata(model_path, "general.architecture")
    declared = model_metadata(model_path, f"{arch}.pooling_type") if arch else None
    if declared is not None and declared.isdigit() and int(declared) in (1, 2, 3):
        return int(declared)
    return _POOLING_BY_NAME["mean"]


class EmbedHandler(RoleHandler):
    role = "embed"
    accepts = (EmbedRequest, BatchRequest)
    llm: Llama

    def load(self) -> LoadedModel:
        pooling = resolve_pooling(self.config.pooling, self.model_path)
        # One sequence must fit one micro-batch for pooled embeddings, so the batch
        # sizes follow the context size: a text may use the whole context.
        self.llm = open_llama(
            self.config,
            self.model_path,
            self.log_path,
            embedding=True,
            pooling_type=pooling,
            n_batch=self.config.n_ctx,
            n_ubatch=self.config.n_ctx,
        )
        if int(self.llm.pooling_type()) == 0:
            raise ModelError("this model gives per-token embeddings only; set pooling")
        return LoadedModel(n_ctx=self.llm.n_ctx(), n_embd=self.llm.n_embd())

    def warm_up(self) -> None:
        self.llm.embed(["warm up"])

    def handle(self, request: Request, ctx: RequestContext) -> Frame:
        if isinstance(request, BatchRequest):
            return self.embed_batch(request, ctx)
        assert isinstance(request, EmbedRequest)
        batch = self.embed_batch(BatchRequest(id=request.id, parts=[request]), ctx)
        [answer] = batch.parts
        if isinstance(answer, ErrorFrame):
            raise from_frame(answer)
        return msgspec.structs.replace(answer, id=request.id)

    def embed_batch(self, request: BatchRequest, ctx: RequestContext) -> BatchResult:
        """Embed several callers' texts in shared llama.cpp batches; a part with a bad
        text is answered with its own error and the others are served."""
        answers: list[EmbedResult | ErrorFrame | None] = [None] * len(request.parts)
        texts: list[str] = []
        sizes: list[int] = []
        owners: list[tuple[int, int, int]] = []  # (part, first text, end)
        for index, part in enumerate(request.parts):
            try:
                if not isinstance(part, EmbedRequest):
                    raise InvalidRequest(f"an embed batch holds embed requests, not {part!r}")
                part_sizes = self.token_counts(part)
            except InvalidRequest as exc:
                exc.role = self.role
                answers[index] = to_frame(exc, part.id)
                continue
            owners.append((index, len(texts), len(texts) + len(part.texts)))
            texts += part.texts
            sizes += part_sizes
        vectors = self.embed_texts(texts, sizes, ctx)
        for index, first, end in owners:
            part = request.parts[index]
            assert isinstance(part, EmbedRequest)
            rows = vectors[first:end]
            if part.normalize:
                norms = np.linalg.norm(rows.astype(np.float64), axis=1, keepdims=True)
                rows = (rows / np.where(norms == 0.0, 1.0, norms)).astype("<f4")
            answers[index] = EmbedResult(
                id=part.id,
                dim=self.llm.n_embd(),
                count=end - first,
                vectors=rows.tobytes(),
                prompt_tokens=sum(sizes[first:end]),
            )
        return BatchResult(id=request.id, parts=[a for a in answers if a is not None])

    def token_counts(self, request: EmbedRequest) -> list[int]:
        """Each text's token count as embedded; ``InvalidRequest`` for an empty text or
        one over the context (unless the request asks to truncate)."""
        check_content(request)  # the supervisor checked too: a backstop for other senders
        limit = self.llm.n_ctx()
        sizes = []
        for index, text in enumerate(request.texts):
            n_tokens = len(self.llm.tokenize(text.encode("utf-8")))
            if n_tokens == 0:
                raise InvalidRequest(f"text {index} is empty", param="texts")
            if n_tokens > limit and not request.truncate:
                raise InvalidRequest(
                    f"text {index} is {n_tokens} tokens, over the context of {limit} "
                    "(truncate=True, or embed --truncate, cuts it)",
                    param="texts",
                )
            sizes.append(min(n_tokens, self.llm.n_batch))
        return sizes

    def embed_texts(self, texts: list[str], sizes: list[int], ctx: RequestContext) -> Any:
        """Raw (unnormalised) float32 vectors, one row per text, decode group by decode
        group with a cancel check between them."""
        dim = self.llm.n_embd()
        if not texts:
            return np.zeros((0, dim), dtype="<f4")
        vectors: list[list[float]] = []
        for start, stop in self.decode_groups(sizes):
            ctx.raise_if_cancelled()
            try:
                vectors += self.llm.embed(texts[start:stop], normalize=False, truncate=True)
            except RuntimeError as exc:
                if decode_aborted(exc, ctx.cancel):
                    ctx.raise_if_cancelled()
                raise
        array = np.asarray(vectors, dtype="<f4").reshape(len(texts), dim)
        if not np.isfinite(array).all():
            raise ModelError("llama.cpp returned non-finite embedding values")
        return array

    def decode_groups(self, sizes: list[int]) -> list[tuple[int, int]]:
        """Texts split into the groups llama-cpp-python would decode together (up to
        ``n_batch`` tokens and ``n_seq_max`` sequences each), as (start, stop) ranges.
        Embedding group by group gives the same numbers as one ``embed()`` of all the
        texts, with a cancel check between decodes."""
        n_batch = self.llm.n_batch
        n_seq_max = int(self.llm.context_params.n_seq_max)
        groups: list[tuple[int, int]] = []
        start = tokens = 0
        for index, size in enumerate(sizes):
            if index > start and (tokens + size > n_batch or index - start >= n_seq_max):
                groups.append((start, index))
                start, tokens = index, 0
            tokens += size
        groups.append((start, len(sizes)))
        return groups
