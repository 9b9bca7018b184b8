"""The rerank role: a query and documents -> one relevance score per document.

``rank`` mode needs a cross-encoder GGUF (llama.cpp pooling type RANK, a classification
head): query/document pairs are packed into batches, one ``llama_decode`` per batch, and
each pair's score is read as the one float llama.cpp writes per sequence. (With RANK
pooling, ``Llama.embed()`` hands back ``n_embd`` floats per input of which only the
first is real; we never read past it.)

``generative`` mode scores with any chat/base model: the probability of " yes" against
" no" after a relevance question, read from the logits of the prompt's last position
(through ``llama_get_logits_ith``: ``Llama.scores`` holds zeros unless the model was
opened with ``logits_all``). Slower, one evaluation per document from an empty context,
but it works with models that have no rank head.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import msgspec

from lilbee_workers.errors import Cancelled, InvalidRequest, ModelError
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
    ErrorFrame,
    Frame,
    Request,
    RerankRequest,
    RerankResult,
)
from lilbee_workers.types import RerankItem

if TYPE_CHECKING:
    from llama_cpp import Llama

RANK_POOLING = 4
GENERATIVE_PROMPT = (
    "Query: {query}\nDocument: {document}\n"
    "Is the document relevant to the query? Answer yes or no.\nAnswer:"
)


class RerankHandler(RoleHandler):
    role = "rerank"
    accepts = (RerankRequest, BatchRequest)
    llm: Llama

    def load(self) -> LoadedModel:
        import llama_cpp

        if self.config.rerank_mode == "generative":
            self.llm = open_llama(self.config, self.model_path, self.log_path)
            self.yes = self._first_token(" yes")
            self.no = self._first_token(" no")
            if self.yes == self.no:
                raise ModelError(
                    f'{self.model_path}: " yes" and " no" start with the same token '
                    f"({self.yes}), so generative scoring cannot tell them apart"
                )
            return LoadedModel(n_ctx=self.llm.n_ctx())
        arch = model_metadata(self.model_path, "general.architecture") or "?"
        declared = model_metadata(self.model_path, f"{arch}.pooling_type")
        if declared != str(RANK_POOLING):
            raise ModelError(
                f"{self.model_path} has no rank head (architecture {arch}, pooling type "
                f"{declared or 'unset'}); use a cross-encoder reranker GGUF, or set "
                'rerank_mode = "generative" to score with a generative model'
            )
        self.llm = open_llama(
            self.config,
            self.model_path,
            self.log_path,
            embedding=True,
            pooling_type=RANK_POOLING,
            n_batch=self.config.n_ctx,
            n_ubatch=self.config.n_ctx,
        )
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_seq_max = int(self.llm.context_params.n_seq_max)
        self.batch = llama_cpp.llama_batch_init(self.config.n_ctx, 0, self.n_seq_max)
        return LoadedModel(n_ctx=self.llm.n_ctx(), n_embd=self.llm.n_embd())

    def handle(self, request: Request, ctx: RequestContext) -> Frame:
        if isinstance(request, BatchRequest):
            return self.rerank_batch(request, ctx)
        assert isinstance(request, RerankRequest)
        [answer] = self.rerank_batch(BatchRequest(id=request.id, parts=[request]), ctx).parts
        if isinstance(answer, ErrorFrame):
            raise from_frame(answer)
        return msgspec.structs.replace(answer, id=request.id)

    def rerank_batch(self, request: BatchRequest, ctx: RequestContext) -> BatchResult:
        """Score several callers' documents; in rank mode their pairs share llama.cpp
        batches. A part with a bad document is answered with its own error."""
        answers: list[RerankResult | ErrorFrame | None] = [None] * len(request.parts)
        pairs: list[list[int]] = []
        owners: list[tuple[int, int, int]] = []  # (part, first pair, end)
        for index, part in enumerate(request.parts):
            try:
                if not isinstance(part, RerankRequest):
                    raise InvalidRequest(f"a rerank batch holds rerank requests, not {part!r}")
                check_content(part)  # the supervisor checked too: a backstop
                if part.top_n is not None and part.top_n <= 0:
                    raise InvalidRequest(f"top_n must be > 0, got {part.top_n}", param="top_n")
                if self.config.rerank_mode == "generative":
                    answers[index] = ranked(part, self._score_generative(part, ctx))
                    continue
                part_pairs = self._pairs(part)
            except InvalidRequest as exc:
                exc.role = self.role
                answers[index] = to_frame(exc, part.id)
                continue
            owners.append((index, len(pairs), len(pairs) + len(part_pairs)))
            pairs += part_pairs
        scores = self._score_pairs(pairs, ctx) if pairs else []
        for index, first, end in owners:
            part = request.parts[index]
            assert isinstance(part, RerankRequest)
            answers[index] = ranked(part, scores[first:end])
        return BatchResult(id=request.id, parts=[a for a in answers if a is not None])

    # ------------------------------------------------------------------ rank head

    def _pair(self, query: list[int], document: str, index: int, truncate: bool) -> list[int]:
        """[BOS] query [EOS/SEP] document [EOS], as llama.cpp's server builds pairs."""
        import llama_cpp

        bos = llama_cpp.llama_vocab_bos(self.vocab)
        eos = llama_cpp.llama_vocab_eos(self.vocab)
        if eos < 0:
            eos = llama_cpp.llama_vocab_sep(self.vocab)
        head = ([bos] if bos >= 0 else []) + query + [eos]
        doc = self.llm.tokenize(document.encode("utf-8"), add_bos=False, special=False)
        # The batch holds config.n_ctx tokens (llama.cpp may round its own n_ctx up).
        window = min(self.config.n_ctx, self.llm.n_ctx())
        room = window - len(head) - 1
        if len(doc) > room:
            if not truncate or room <= 0:
                raise InvalidRequest(
                    f"document {index} with the query is {len(head) + len(doc) + 1} tokens, "
                    f"over the context of {window} (truncate=True, or rerank --truncate, cuts it)",
                    param="documents",
                )
            doc = doc[:room]
        return [*head, *doc, eos]

    def _pairs(self, request: RerankRequest) -> list[list[int]]:
        query = self.llm.tokenize(request.query.encode("utf-8"), add_bos=False, special=False)
        return [
            self._pair(query, doc, i, request.truncate) for i, doc in enumerate(request.documents)
        ]

    def _score_pairs(self, pairs: list[list[int]], ctx: RequestContext) -> list[float]:
        """Pairs in groups that fit one ``llama_decode`` each; a score per pair."""
        scores: list[float] = []
        group: list[list[int]] = []
        group_tokens = 0
        for pair in pairs:
            if group and (
                group_tokens + len(pair) > self.config.n_ctx or len(group) >= self.n_seq_max
            ):
                scores += self._decode_group(group)
                ctx.raise_if_cancelled()
                group, group_tokens = [], 0
            group.append(pair)
            group_tokens += len(pair)
        scores += self._decode_group(group)
        return scores

    def _decode_group(self, group: list[list[int]]) -> list[float]:
        """Score several pairs in one ``llama_decode``: one float per sequence."""
        import llama_cpp

        batch = self.batch
        n = 0
        for seq_id, tokens in enumerate(group):
            for pos, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = True
                n += 1
        batch.n_tokens = n
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm.ctx), True)
        status = llama_cpp.llama_decode(self.llm.ctx, batch)
        if status == 2:  # our abort callback stopped it: the request was cancelled
            raise Cancelled("rerank cancelled mid-decode")
        if status != 0:
            raise ModelError(f"llama_decode failed with status {status}")
        scores = []
        for seq_id in range(len(group)):
            pointer = llama_cpp.llama_get_embeddings_seq(self.llm.ctx, seq_id)
            if not pointer:
                raise ModelError("llama.cpp returned no rank score")
            score = float(pointer[0])
            if not math.isfinite(score):
                raise ModelError(f"llama.cpp returned a non-finite score ({score})")
            scores.append(score)
        return scores

    # ------------------------------------------------------------------ generative

    def _first_token(self, text: str) -> int:
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if not tokens:
            raise ModelError(f"the model's vocabulary cannot encode {text!r}")
        return int(tokens[0])

    def _score_generative(self, request: RerankRequest, ctx: RequestContext) -> list[float]:
        import llama_cpp

        scores = []
        limit = self.llm.n_ctx()
        for index, document in enumerate(request.documents):
            prompt = GENERATIVE_PROMPT.format(query=request.query, document=document)
            tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
            if len(tokens) >= limit:
                if not request.truncate:
                    raise InvalidRequest(
                        f"document {index} with the query is {len(tokens)} tokens, over the "
                        f"context of {limit} (truncate=True, or rerank --truncate, cuts it)",
                        param="documents",
                    )
                tail = self.llm.tokenize(
                    b"\nIs the document relevant to the query? Answer yes or no.\nAnswer:",
                    add_bos=False,
                )
                tokens = tokens[: limit - len(tail) - 1] + tail
            # Every document from an empty context: no prefix reuse, so a score never
            # depends on the documents or requests evaluated before it.
            self.llm.reset()  # type: ignore[no-untyped-call]
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm.ctx), True)
            try:
                self.llm.eval(tokens)
            except RuntimeError as exc:
                if decode_aborted(exc, ctx.cancel):
                    ctx.raise_if_cancelled()
                raise
            logits = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
            if not logits:
                raise ModelError("llama.cpp kept no logits for the prompt's last position")
            scores.append(p_yes(float(logits[self.yes]), float(logits[self.no])))
            ctx.raise_if_cancelled()
        return scores


def ranked(request: RerankRequest, scores: list[float]) -> RerankResult:
    """The documents best first (the first ``top_n``), with their scores."""
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    if request.top_n is not None:
        order = order[: request.top_n]
    documents = request.documents if request.return_documents else None
    return RerankResult(
        id=request.id,
        results=[
            RerankItem(index=i, score=scores[i], document=documents[i] if documents else None)
            for i in order
        ],
    )


def p_yes(yes: float, no: float) -> float:
    """P(yes) / (P(yes) + P(no)) from the two logits; ``ModelError`` if not finite."""
    if not (math.isfinite(yes) and math.isfinite(no)):
        raise ModelError(f"llama.cpp returned non-finite logits (yes {yes}, no {no})")
    top = max(yes, no)
    return math.exp(yes - top) / (math.exp(yes - top) + math.exp(no - top))
