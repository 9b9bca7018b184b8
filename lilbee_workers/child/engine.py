"""A chat worker's streams on one batched generator (``parallel`` > 1): requests in,
``ChatChunk``/``ChatResult`` frames out, one ``llama_decode`` per step for all of them.

One thread steps the engine (the worker's serving loop, or a Ray actor's stepping
thread); ``submit`` and ``cancel`` may come from any thread. Each stream's frames go to
the ``emit`` it was submitted with, under the request's own id; ``emit`` deals with a
frame over the cap (the worker's ``Server.reply``, the Ray actor's encoder).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lilbee_workers.child.state import RequestState
from lilbee_workers.errors import ModelError, WorkerError
from lilbee_workers.roles.batch_stream import StreamEvent
from lilbee_workers.roles.batching import BatchedGenerator
from lilbee_workers.roles.chat import ChatHandler
from lilbee_workers.transport.error_frames import to_frame
from lilbee_workers.transport.frames import (
    ChatChunk,
    ChatRequest,
    ChatResult,
    CompleteRequest,
    Frame,
)

log = logging.getLogger("lilbee_workers.child")
Emit = Callable[[Frame], None]


@dataclass
class _Out:
    """Where one stream's frames go, and what it has sent."""

    emit: Emit
    pieces: list[str] = field(default_factory=list)


class BatchEngine:
    """Up to ``parallel`` chat streams decoded together; more wait for a free slot."""

    def __init__(self, handler: ChatHandler, state: RequestState, parallel: int) -> None:
        self.handler = handler
        self.state = state
        self.parallel = parallel
        self._outs: dict[int, _Out] = {}
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self.generator = self._new_generator()
        state.on_cancel, state.batched = self.cancel, True

    def _new_generator(self) -> BatchedGenerator:
        import llama_cpp

        config = self.handler.config
        generator = BatchedGenerator.from_llama(
            self.handler.llm,
            streams=self.parallel,
            stream_ctx=config.n_ctx,
            step_tokens=config.batch_step_tokens(),
        )
        state = self.state

        def should_abort(_data: Any) -> bool:
            state.step()  # progress the heartbeat reports (stall detection)
            # Shutdown stops everything; a running stream's cancel stops the step, which
            # the generator rolls back and runs again without that stream.
            return state.cancel.is_set() or generator.cancel_waiting

        # ctypes keeps no reference of its own: it lives as long as this engine.
        self._abort_callback = llama_cpp.ggml_abort_callback(should_abort)
        llama_cpp.llama_set_abort_callback(generator.context, self._abort_callback, None)
        return generator

    # -- any thread ----------------------------------------------------------------

    def submit(self, request: ChatRequest | CompleteRequest, emit: Emit) -> None:
        """Start a stream for ``request`` (it waits if every slot is taken); bad input,
        or a chat template that refuses the messages, is answered at once on ``emit``
        as an ``ErrorFrame``, and the streams running beside it never notice."""
        try:
            tokens, sampling = self.handler.stream_plan(request)
            with self._lock:  # the stepping thread delivers nothing of it before it began
                self.generator.admit(request.id, tokens, sampling)
                self._outs[request.id] = _Out(emit)
                cancelled_early = self.state.begin_stream(request.id)
                self._work.notify_all()
        except Exception as exc:
            self._refuse(exc, request.id, emit)
            return
        if cancelled_early:
            self.generator.cancel(request.id)

    def _refuse(self, exc: Exception, request_id: int, emit: Emit) -> None:
        """Answer a request that never started: as ``Server.run`` answers a handler's
        error (a ``WorkerError`` as it is, anything else llama.cpp raised as
        ``ModelError``)."""
        if not isinstance(exc, WorkerError):
            log.warning("request %d refused: %s: %s", request_id, type(exc).__name__, exc)
            exc = ModelError(
                f"llama.cpp refused the request: {exc}",
                role=self.handler.role,
                log_path=self.handler.log_path,
            )
        exc.role = self.handler.role
        emit(to_frame(exc, request_id))

    def cancel(self, request_id: int) -> None:
        self.generator.cancel(request_id)

    @property
    def busy(self) -> bool:
        return not self.generator.idle

    def wait_for_work(self, timeout: float) -> bool:
        """Block until a stream waits or runs (a stepping thread's idle wait)."""
        with self._lock:
            return self._work.wait_for(lambda: self.busy, timeout)

    # -- the stepping thread ---------------------------------------------------------

    def step(self) -> None:
        """One decode step for every running stream; send what each produced. A failed
        decode fails every stream (``ModelError``) and starts a fresh generator."""
        try:
            events = self.generator.step()
        except ModelError as exc:
            self._fail_all(exc)
            return
        for event in events:
            self._deliver(event)

    def _deliver(self, event: StreamEvent) -> None:
        out = self._outs.get(event.stream_id)
        if out is None:
            return
        if event.text:
            index = len(out.pieces)
            out.pieces.append(event.text)
            chunk = ChatChunk(event.stream_id, index, event.text, event.completion_tokens)
            out.emit(chunk)
        if event.finish_reason is None:
            return
        with self._lock:
            self._outs.pop(event.stream_id, None)
        self.state.end_stream(event.stream_id)
        result = ChatResult(
            id=event.stream_id,
            text="".join(out.pieces),
            finish_reason=event.finish_reason,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            chunks=len(out.pieces),
        )
        out.emit(result)

    def _fail_all(self, exc: ModelError) -> None:
        log.error("batched step failed; failing its %d streams: %s", len(self._outs), exc)
        with self._lock:
            outs, self._outs = self._outs, {}
        self.generator.close()
        self.generator = self._new_generator()
        for request_id, out in outs.items():
            self.state.end_stream(request_id)
            error = ModelError(str(exc), role=self.handler.role, log_path=self.handler.log_path)
            out.emit(to_frame(error, request_id))

    def close(self) -> None:
        self.generator.close()
