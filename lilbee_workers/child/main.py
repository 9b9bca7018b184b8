"""A worker's life: boot, load the model, say READY, then serve the data pipe one
request at a time until it closes."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import msgspec

from lilbee_workers.child.heartbeat import ForwardingHandler, ProgressReporter, start_heartbeat
from lilbee_workers.child.state import RequestState
from lilbee_workers.child.stdio import rotate_log, use_log_streams
from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import InvalidRequest, ModelError, ProtocolError, WorkerError
from lilbee_workers.logs import tail_lines
from lilbee_workers.roles.base import RequestContext, RoleHandler, load_progress
from lilbee_workers.transport import codec
from lilbee_workers.transport.channel import PipeChannel
from lilbee_workers.transport.error_frames import to_frame
from lilbee_workers.transport.frames import (
    ChatRequest,
    CompleteRequest,
    DebugRequest,
    Frame,
    LoadFailed,
    NoopRequest,
    NoopResult,
    Ready,
    Request,
    WorkerBoot,
)

if TYPE_CHECKING:
    from lilbee_workers.child.engine import BatchEngine

ROTATE_EVERY_STEPS = 256  # how often a batching worker that is never idle checks its log

_boot_decoder = msgspec.msgpack.Decoder(WorkerBoot)
log = logging.getLogger("lilbee_workers.child")


def main(data_fd: int, health_fd: int) -> None:
    """Entry point of a worker process (after ``__main__`` armed the parent-death signal)."""
    # On an abort, ggml would attach gdb to print a backtrace: slow, and it buries
    # llama.cpp's own assert message (the line users need) under the backtrace.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    use_log_streams()
    data = PipeChannel(Connection(data_fd), codec.TO_WORKER)
    try:
        boot = _boot_decoder.decode(data.recv_raw())
    except (EOFError, OSError, msgspec.DecodeError) as exc:
        print(f"lilbee-workers: no boot frame from the supervisor: {exc}", file=sys.stderr)
        os._exit(2)
    data.max_frame_bytes = boot.max_frame_bytes
    health = PipeChannel(Connection(health_fd), codec.TO_HEARTBEAT, boot.max_frame_bytes)
    print(
        f"=== lilbee-workers {boot.role} worker pid {os.getpid()} generation {boot.generation}",
        flush=True,
    )
    config = msgspec.msgpack.decode(boot.config, type=RoleConfig)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger().addHandler(ForwardingHandler(health))
    state = RequestState()
    start_heartbeat(health, state, config.cancel_grace_s)
    loaded = load(boot, data, state, ProgressReporter(health))
    Server(data, loaded.handler, state, config, boot, loaded.engine).serve()


def load(
    boot: WorkerBoot,
    data: PipeChannel[Request],
    state: RequestState,
    progress: Callable[[float], None],
) -> Loaded:
    """Load the role's model (telling ``progress`` how far it has come) and say READY;
    on failure say why and exit."""
    loaded = load_role(boot, state, progress)
    if isinstance(loaded, LoadFailed):
        try:
            data.send(loaded)
        finally:
            os._exit(2)
    data.send(loaded.ready)
    return loaded


@dataclass
class Loaded:
    """A loaded worker: its handler, its READY frame, and (chat with ``parallel`` > 1)
    the engine that batches its streams."""

    handler: RoleHandler
    ready: Ready
    engine: BatchEngine | None = None


def load_role(
    boot: WorkerBoot,
    state: RequestState,
    progress: Callable[[float], None],
    node: str = "",
) -> Loaded | LoadFailed:
    """Load the role's model for a worker (a process, or a Ray actor on ``node``), or
    say why it could not (``LoadFailed``)."""
    from lilbee_workers.roles import create_handler

    config = msgspec.msgpack.decode(boot.config, type=RoleConfig)
    started = time.monotonic()
    try:
        handler = create_handler(boot.role, config, boot.model_path, boot.log_path)
        with load_progress(progress):
            model = handler.load()
        handler.watch_cancel(state.cancel, state.step)
        state.metered = handler.metered
        if boot.warm_up:
            handler.warm_up()
        engine = batch_engine(handler, config, state)
    except Exception as exc:
        kind = "model" if isinstance(exc, (ModelError, ImportError)) else "internal"
        message = str(exc) if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}"
        log.error("load failed: %s", message)
        return LoadFailed(role=boot.role, pid=os.getpid(), kind=kind, message=message)
    seconds = time.monotonic() - started
    log.info("%s worker ready: %s in %.2fs", boot.role, boot.model_path, seconds)
    ready = Ready(
        role=boot.role,
        pid=os.getpid(),
        model=boot.model_path,
        n_ctx=model.n_ctx,
        n_embd=model.n_embd,
        chat_template=model.chat_template,
        load_seconds=seconds,
        node=node,
        slots=engine.parallel if engine is not None else 1,
        kv_cache_bytes=kv_cache_bytes(handler, engine),
    )
    return Loaded(handler, ready, engine)


def kv_cache_bytes(handler: RoleHandler, engine: BatchEngine | None) -> int:
    """The worker's KV caches (every context it made), from the model's metadata; 0 if
    that cannot be read (the figure is for ``status``, never a reason to fail)."""
    import llama_cpp

    from lilbee_workers.memory import cache_bytes

    contexts = [llm.ctx for llm in handler.models()]
    if engine is not None:
        contexts.append(engine.generator.context)
    try:
        return cache_bytes(handler.model_path, sum(llama_cpp.llama_n_ctx(c) for c in contexts))
    except Exception:
        return 0


def batch_engine(
    handler: RoleHandler, config: RoleConfig, state: RequestState
) -> BatchEngine | None:
    """The engine that batches a chat worker's streams, when ``parallel`` > 1."""
    from lilbee_workers.roles.chat import ChatHandler

    if config.parallel <= 1 or not isinstance(handler, ChatHandler):
        return None
    from lilbee_workers.child.engine import BatchEngine

    return BatchEngine(handler, state, config.parallel)


class Server:
    """The serving loop: one request at a time, one final frame each; or, with a batch
    engine, chat streams side by side (other requests still run one at a time)."""

    def __init__(
        self,
        data: PipeChannel[Request],
        handler: RoleHandler,
        state: RequestState,
        config: RoleConfig,
        boot: WorkerBoot,
        engine: BatchEngine | None = None,
    ) -> None:
        self.engine = engine
        self.data = data
        self.handler = handler
        self.state = state
        self.config = config
        self.boot = boot

    def serve(self) -> None:
        """Read one request, run it, write its reply frames; until the pipe closes."""
        if self.engine is not None:
            self.serve_batched(self.engine)
            return
        while True:
            try:
                request = self.decode(self.data.recv_raw())
            except (EOFError, OSError):
                return
            if request is None:
                continue
            self.state.begin(request.id)
            try:
                reply = self.run(request)
            finally:
                self.state.end()
            rotate_log(self.boot.log_path, self.boot.log_max_bytes)  # before the reply: no race
            self.reply(request.id, reply)

    def serve_batched(self, engine: BatchEngine) -> None:
        """Take requests as they come while every running stream steps: wait on the
        pipe only when nothing runs, else read what has arrived between two steps."""
        steps = 0
        while True:
            try:
                while not engine.busy or self.data.poll(0):
                    if not engine.busy:
                        rotate_log(self.boot.log_path, self.boot.log_max_bytes)
                    request = self.decode(self.data.recv_raw())
                    if request is not None:
                        self.take(request, engine)
            except (EOFError, OSError):
                return
            engine.step()
            steps += 1
            if steps % ROTATE_EVERY_STEPS == 0:  # a worker never idle still rotates
                rotate_log(self.boot.log_path, self.boot.log_max_bytes)

    def decode(self, raw: bytes) -> Request | None:
        """The request in ``raw``; None once an undecodable one has been answered."""
        try:
            return self.data.receives.decode(raw, self.data.max_frame_bytes)
        except ProtocolError as exc:
            exc.role = self.handler.role
            self.data.send(to_frame(exc, codec.request_id_of(raw)))
            return None

    def take(self, request: Request, engine: BatchEngine) -> None:
        """One request read while streams run: a chat stream joins the batch; any other
        request runs now, between two steps."""
        if isinstance(request, (ChatRequest, CompleteRequest)):
            request_id = request.id
            engine.submit(request, lambda frame: self.reply(request_id, frame))
            return
        self.reply(request.id, self.run(request))

    def reply(self, request_id: int, frame: Frame) -> None:
        """Send a frame of ``request_id``; one over the frame cap becomes an error naming it."""
        try:
            self.data.send(frame)
        except ProtocolError as exc:
            error = InvalidRequest(f"reply too large: {exc.message}", role=self.handler.role)
            self.data.send(to_frame(error, request_id))

    def run(self, request: Request, send: Callable[[Frame], None] | None = None) -> Frame:
        """One request's final frame (chunks go to ``send``, by default the data pipe);
        handler errors become typed ``ErrorFrame``s."""
        handler = self.handler
        try:
            if isinstance(request, NoopRequest):
                return NoopResult(id=request.id)
            if isinstance(request, DebugRequest):
                if not self.config.debug_requests:
                    raise InvalidRequest("debug requests are disabled for this role")
                return self.run_debug(request)
            if not isinstance(request, handler.accepts):
                raise InvalidRequest(
                    f"the {handler.role} worker does not serve {type(request).__name__}"
                )
            return handler.handle(
                request, RequestContext(request.id, send or self.data.send, self.state.cancel)
            )
        except WorkerError as exc:
            exc.role = handler.role
            if exc.kind not in ("invalid_request", "cancelled"):
                exc.log_path = handler.log_path
            return to_frame(exc, request.id)
        except Exception as exc:  # llama.cpp raised: the request failed, the worker lives
            log.exception("request %d failed", request.id)
            error = ModelError(
                f"{type(exc).__name__}: {exc}",
                role=handler.role,
                log_path=handler.log_path,
                log_tail=tail_lines(handler.log_path, 5),
            )
            return to_frame(error, request.id)

    def run_debug(self, request: DebugRequest) -> Frame:
        """Fault injection for tests (only when the role enables ``debug_requests``)."""
        if request.below_generation and self.boot.generation >= request.below_generation:
            return NoopResult(id=request.id)
        if request.action == "abort":
            os.abort()
        if request.action == "exit":
            os._exit(3)
        if request.action == "exit0":
            os._exit(0)
        if request.action == "log":
            for line in range(request.count):
                log.log(request.level, "debug log line %d of %d", line + 1, request.count)
            return NoopResult(id=request.id)
        if request.action == "wedge":
            self.state.arm_wedge()
            return NoopResult(id=request.id)
        deadline = time.monotonic() + request.seconds
        while time.monotonic() < deadline:
            self.state.step()  # a long call that works, as far as stall detection sees
            if request.action == "sleep" and self.state.cancel.is_set():
                break
            if request.action == "sleep":
                time.sleep(0.01)
        return NoopResult(id=request.id)
