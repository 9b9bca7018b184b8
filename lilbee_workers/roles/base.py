"""What every role shares: the handler interface, the request context, model loading."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import Cancelled, InvalidRequest, ModelError
from lilbee_workers.transport.frames import Frame, Request

if TYPE_CHECKING:
    from llama_cpp import Llama


class RequestContext:
    """What a handler gets besides the request: a way to stream, and cancellation."""

    def __init__(self, request_id: int, emit: Callable[[Frame], None], cancel: threading.Event):
        self.request_id = request_id
        self.emit = emit
        self.cancel = cancel

    def raise_if_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"request {self.request_id} was cancelled")


class LoadedModel:
    """Facts the worker reports in its READY frame."""

    def __init__(self, n_ctx: int, n_embd: int = 0, chat_template: str | None = None):
        self.n_ctx = n_ctx
        self.n_embd = n_embd
        self.chat_template = chat_template


class RoleHandler(ABC):
    """A role's handler, living in the worker process. One request at a time."""

    role: ClassVar[str]
    accepts: ClassVar[tuple[type[Frame], ...]]
    metered: ClassVar[bool] = True
    """Whether llama.cpp's abort callback sees all of a call's compute (stall detection
    is off for a role where it does not)."""

    def __init__(self, config: RoleConfig, model_path: str, log_path: str) -> None:
        self.config = config
        self.model_path = model_path
        self.log_path = log_path

    @abstractmethod
    def load(self) -> LoadedModel:
        """Load the model; raise ``ModelError`` with the reason when it cannot."""

    @abstractmethod
    def handle(self, request: Request, ctx: RequestContext) -> Frame:
        """Serve one request: stream chunks through ``ctx.emit``, return the final frame.
        Raise ``InvalidRequest`` for bad input and ``ModelError`` when llama.cpp refuses."""

    def warm_up(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Touch the weights once (a tiny computation) so the first call is not slowed by
        paging them in; roles that can, override it."""

    def models(self) -> list[Llama]:
        """The llama.cpp models this handler computes with (after ``load``)."""
        llm = getattr(self, "llm", None)
        return [llm] if llm is not None else []

    def watch_cancel(
        self, cancel: threading.Event, step: Callable[[], None] = lambda: None
    ) -> None:
        """After ``load``: stop llama.cpp mid-computation once ``cancel`` is set, count
        each graph node computed (``step``: the progress the heartbeat reports), and
        keep per-call log lines out of the role's log.

        llama.cpp's abort callback is polled between graph nodes, so a cancelled
        embed batch or a long prompt stops within milliseconds instead of running to
        the end (``llama_decode`` then fails with status 2, which handlers report as
        ``Cancelled``)."""
        import llama_cpp
        from llama_cpp import _logger

        def should_abort(_data: Any) -> bool:
            step()
            return cancel.is_set()

        # ctypes keeps no reference of its own: the callback must live as long as the model.
        self._abort_callback = llama_cpp.ggml_abort_callback(should_abort)
        for llm in self.models():
            llama_cpp.llama_set_abort_callback(llm.ctx, self._abort_callback, None)
            llm.verbose = False  # no timing lines per call: the log would grow on every call
        _logger.logger.setLevel(logging.WARNING)  # llama.cpp's warnings and errors still land


def open_llama(config: RoleConfig, model_path: str, log_path: str, **params: Any) -> Llama:
    """Load a model with llama-cpp-python; failures become ``ModelError`` carrying
    llama.cpp's own reason (its log lines, which went to the worker's log file)."""
    if not os.path.isfile(model_path):
        raise ModelError(f"model file not found: {model_path}")
    from llama_cpp import Llama

    options: dict[str, Any] = {
        "n_ctx": config.n_ctx,
        "n_batch": config.n_batch,
        "n_ubatch": config.n_ubatch,
        "n_gpu_layers": config.n_gpu_layers,
        "verbose": True,  # llama.cpp's log lines go to the role's log file
    }
    if config.n_threads is not None:
        options["n_threads"] = config.n_threads
        options["n_threads_batch"] = config.n_threads
    options.update(params)
    try:
        return Llama(model_path=model_path, **options)
    except (ValueError, RuntimeError, OSError) as exc:
        from lilbee_workers.logs import tail_lines

        reason = tail_lines(log_path, 8)
        raise ModelError(f"llama.cpp could not load {model_path}: {exc}\n{reason}") from None


@contextlib.contextmanager
def load_progress(report: Callable[[float], None]) -> Iterator[None]:
    """While the block loads a model, llama.cpp's progress callback passes how far the
    load has come (0.0 to 1.0, by bytes of weights read) to ``report``.

    ``Llama`` builds its model parameters from ``llama_model_default_params()`` and
    loads at once, with no way to set the callback; so inside the block those defaults
    come with it set. Only the worker's main thread loads, one model at a time."""
    import llama_cpp.llama_cpp as low

    def on_progress(fraction: float, _user_data: Any) -> bool:
        try:
            report(fraction)
        except Exception:  # progress is a courtesy: it never stops a load
            pass
        return True  # False would abort the load

    # ctypes keeps no reference of its own while C holds the pointer: this one lives
    # through the block (and in the ``Llama``'s model params after it).
    callback = low.llama_progress_callback(on_progress)
    defaults = low.llama_model_default_params

    def with_callback() -> Any:
        params = defaults()
        params.progress_callback = callback
        return params

    low.llama_model_default_params = with_callback
    try:
        yield
    finally:
        low.llama_model_default_params = defaults


def model_metadata(model_path: str, key: str) -> str | None:
    """One GGUF metadata value, read with a vocab-only load (no weights, no context)."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), params)
    if not model:
        return None
    try:
        buf = ctypes.create_string_buffer(256)
        size = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if size >= 0 else None
    finally:
        llama_cpp.llama_model_free(model)


def decode_aborted(exc: BaseException, cancel: threading.Event) -> bool:
    """Whether llama-cpp-python's error is llama.cpp stopping for our abort callback."""
    return cancel.is_set() and "returned 2" in str(exc)


def check_sampling(max_tokens: int | None, temperature: float, top_p: float | None = None) -> None:
    """Refuse sampling parameters llama.cpp would misread."""
    if max_tokens is not None and max_tokens <= 0:
        raise InvalidRequest(f"max_tokens must be > 0, got {max_tokens}", param="max_tokens")
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidRequest(
            f"temperature must be a finite number >= 0, got {temperature}", param="temperature"
        )
    if top_p is not None and (not math.isfinite(top_p) or not 0 < top_p <= 1):
        raise InvalidRequest(f"top_p must be in (0, 1], got {top_p}", param="top_p")


def check_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed < 2**32:
        raise InvalidRequest(f"seed must be in [0, 2**32), got {seed}", param="seed")
