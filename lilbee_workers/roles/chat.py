"""The chat role: messages -> streamed text chunks, then the whole reply with token counts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from lilbee_workers.errors import Cancelled, InvalidRequest, ModelError
from lilbee_workers.limits import check_content
from lilbee_workers.roles.base import (
    LoadedModel,
    RequestContext,
    RoleHandler,
    check_sampling,
    check_seed,
    decode_aborted,
    open_llama,
)
from lilbee_workers.roles.batch_stream import Sampling
from lilbee_workers.roles.chat_prompt import chat_prompt, completion_tokens
from lilbee_workers.transport.frames import (
    ChatChunk,
    ChatRequest,
    ChatResult,
    CompleteRequest,
    Frame,
    Request,
)
from lilbee_workers.types import ChatMessage

if TYPE_CHECKING:
    from llama_cpp import Llama

CHAT_ROLES = ("system", "user", "assistant")


class GenerationMeter:
    """Wraps a ``Llama`` instance's ``generate`` to count prompt and completion tokens
    exactly and to stop at the next token once ``cancel`` is set.

    llama-cpp-python's chat handlers drop ``stopping_criteria`` and run logits
    processors inside a C callback (where an exception cannot stop anything), so the
    token loop itself is the one reliable place to meter and to cancel.
    """

    def __init__(self, llm: Llama, cancel: threading.Event) -> None:
        import llama_cpp

        self._generate = llm.generate
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self.cancel = cancel
        self.prompt_tokens = 0
        self.completion_tokens = 0
        llm.generate = self  # type: ignore[method-assign,assignment]

    def __call__(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        self.prompt_tokens = len(tokens)
        self.completion_tokens = 0
        for token in self._generate(tokens, *args, **kwargs):
            if self.cancel.is_set():
                raise Cancelled("cancelled")
            if not self._is_eog(self._vocab, token):
                self.completion_tokens += 1
            yield token


def fallback_chat_format(architecture: str) -> str:
    """The llama-cpp-python chat format used when a model carries no chat template."""
    return "gemma" if architecture.startswith("gemma") else "chatml"


def choose_chat_template(llm: Llama, configured: str | None) -> str:
    """Set the chat format on ``llm`` and say which one is used:
    ``config:NAME``, ``model`` (the GGUF's own template) or ``fallback:NAME``."""
    if configured:
        llm.chat_format = configured
        return f"config:{configured}"
    if "tokenizer.chat_template" in llm.metadata:
        return "model"
    name = fallback_chat_format(llm.metadata.get("general.architecture", ""))
    llm.chat_format = name
    return f"fallback:{name}"


def stream_chat(
    llm: Llama,
    meter: GenerationMeter,
    ctx: RequestContext,
    messages: list[dict[str, Any]],
    *,
    prompt_cache: bool = False,
    **sampling: Any,
) -> ChatResult:
    """Run a chat completion, forwarding its text as ``ChatChunk`` frames as it is
    generated (cancellable at each token); end with the whole result."""
    return stream_generation(
        llm,
        meter,
        ctx,
        lambda: llm.create_chat_completion(messages=messages, stream=True, **sampling),  # type: ignore[arg-type]
        lambda choice: choice["delta"].get("content"),
        prompt_cache=prompt_cache,
    )


def stream_generation(
    llm: Llama,
    meter: GenerationMeter,
    ctx: RequestContext,
    start: Callable[[], Any],
    text_of: Callable[[dict[str, Any]], str | None],
    *,
    prompt_cache: bool = False,
    param: str = "messages",
) -> ChatResult:
    """Stream a llama-cpp-python generation (``start()`` returns its chunk iterator) as
    ``ChatChunk`` frames; end with the whole result.

    Unless ``prompt_cache``, the model's state is reset first: llama-cpp-python would
    reuse the prompt prefix left by the previous call and evaluate the rest in another
    batch shape, and greedy decoding can then pick other tokens. Reset, the answer is
    the one a fresh worker gives, whatever this worker served before."""
    meter.cancel = ctx.cancel
    if not prompt_cache:
        llm.reset()  # type: ignore[no-untyped-call]
    pieces: list[str] = []
    finish_reason = "length"
    try:
        stream: Iterator[Any] = iter(start())
        for chunk in stream:
            choice = chunk["choices"][0]
            text = text_of(choice)
            if text:
                chunk = ChatChunk(ctx.request_id, len(pieces), text, meter.completion_tokens)
                ctx.emit(chunk)
                pieces.append(text)
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
    except Cancelled:
        finish_reason = "cancelled"
    except RuntimeError as exc:
        if not decode_aborted(exc, ctx.cancel):
            raise
        finish_reason = "cancelled"
        llm.reset()  # type: ignore[no-untyped-call]  # an aborted decode leaves no usable prefix
    except ValueError as exc:
        if "exceed context window" in str(exc):
            raise InvalidRequest(f"prompt is too long: {exc}", param=param) from None
        raise ModelError(f"llama.cpp refused the request: {exc}") from None
    return ChatResult(
        id=ctx.request_id,
        text="".join(pieces),
        finish_reason=finish_reason,
        prompt_tokens=meter.prompt_tokens,
        completion_tokens=meter.completion_tokens,
        chunks=len(pieces),
    )


def check_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    if not messages:
        raise InvalidRequest("messages must not be empty", param="messages")
    for index, message in enumerate(messages):
        if message.role not in CHAT_ROLES:
            raise InvalidRequest(
                f"messages[{index}].role must be one of {', '.join(CHAT_ROLES)}, "
                f"got {message.role!r}",
                param="messages",
            )
    return [{"role": m.role, "content": m.content} for m in messages]


class ChatHandler(RoleHandler):
    role = "chat"
    accepts = (ChatRequest, CompleteRequest)
    llm: Llama
    meter: GenerationMeter

    def load(self) -> LoadedModel:
        self.llm = open_llama(self.config, self.model_path, self.log_path)
        template = choose_chat_template(self.llm, self.config.chat_format)
        self.cancel = threading.Event()
        self.meter = GenerationMeter(self.llm, self.cancel)
        return LoadedModel(n_ctx=self.llm.n_ctx(), chat_template=template)

    def warm_up(self) -> None:
        self.llm.eval(self.llm.tokenize(b"warm up"))
        self.llm.reset()  # type: ignore[no-untyped-call]

    def handle(self, request: Request, ctx: RequestContext) -> Frame:
        if isinstance(request, CompleteRequest):
            return self.complete(request, ctx)
        assert isinstance(request, ChatRequest)
        check_content(request)  # the supervisor checked too: a backstop for other senders
        messages = check_messages(request.messages)
        check_sampling(request.max_tokens, request.temperature, request.top_p)
        check_seed(request.seed)
        return stream_chat(
            self.llm,
            self.meter,
            ctx,
            messages,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=list(request.stop),
            seed=request.seed,
            prompt_cache=self.config.prompt_cache,
        )

    def stream_plan(self, request: ChatRequest | CompleteRequest) -> tuple[list[int], Sampling]:
        """What a batched stream generates from (``parallel`` > 1): the checked request's
        prompt tokens, built as the solo path builds them, and its sampling settings."""
        check_content(request)
        check_sampling(request.max_tokens, request.temperature, request.top_p)
        check_seed(request.seed)
        if isinstance(request, ChatRequest):
            messages = check_messages(request.messages)
            tokens, stop = chat_prompt(self.llm, messages, list(request.stop))
        else:
            tokens, stop = completion_tokens(self.llm, request.prompt), list(request.stop)
        sampling = Sampling(
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            max_tokens=request.max_tokens,
            stop=tuple(stop),
        )
        return tokens, sampling

    def complete(self, request: CompleteRequest, ctx: RequestContext) -> ChatResult:
        """Continue a raw prompt: no chat template (base models continue text well and
        babble through a template they were never trained on)."""
        check_content(request)  # the supervisor checked too: a backstop for other senders
        check_sampling(request.max_tokens, request.temperature, request.top_p)
        check_seed(request.seed)
        llm = self.llm
        return stream_generation(
            llm,
            self.meter,
            ctx,
            lambda: llm.create_completion(
                request.prompt,
                stream=True,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                stop=list(request.stop),
                seed=request.seed,
            ),
            lambda choice: choice.get("text"),
            prompt_cache=self.config.prompt_cache,
            param="prompt",
        )
