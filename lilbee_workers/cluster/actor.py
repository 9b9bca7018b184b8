"""One role replica as a Ray actor: the worker's side of the Ray backend.

It runs the same code as a local worker (``roles/`` handlers behind ``child.main``'s
``Server``), and speaks the same msgspec frames: Ray carries our encoded bytes, never
our objects, so the schema stays ours. Two method groups, as a local worker has two
pipes: ``load`` and ``call`` (a streaming generator: one item per frame) run in the
"data" group, one at a time; ``beat``, ``cancel`` and ``stop`` run in the "control"
group, so a long inference never starves liveness or cancel.

The class knows nothing of Ray: the supervisor side (``cluster.worker``) makes it an
actor with the groups, resources and ``max_restarts=0``/``max_task_retries=0`` (a
replayed stream would splice two generations: retry-once stays in our policy code).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec

from lilbee_workers.child.heartbeat import ForwardingHandler, ProgressReporter, pong
from lilbee_workers.child.main import Server, load_role
from lilbee_workers.child.state import RequestState
from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import InvalidRequest, ProtocolError
from lilbee_workers.transport import codec
from lilbee_workers.transport.error_frames import to_frame
from lilbee_workers.transport.frames import (
    ChatRequest,
    ChatResult,
    CompleteRequest,
    ErrorFrame,
    Frame,
    LoadFailed,
    Request,
    WorkerBoot,
)

if TYPE_CHECKING:
    from lilbee_workers.child.engine import BatchEngine

log = logging.getLogger("lilbee_workers.actor")
_OUTBOX_FRAMES = 1000  # log and progress frames kept between two beats


class Outbox:
    """Health frames (log records, load progress) waiting for the next ``beat``."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._frames: collections.deque[bytes] = collections.deque(maxlen=_OUTBOX_FRAMES)
        self._lock = threading.Lock()

    def send(self, frame: Frame) -> None:
        data = codec.encode(frame, self.max_frame_bytes)
        with self._lock:
            self._frames.append(data)

    def drain(self) -> list[bytes]:
        with self._lock:
            frames = list(self._frames)
            self._frames.clear()
        return frames


class RoleActor:
    """A role's handler in a Ray actor process; made by ``cluster.worker``."""

    def __init__(self, boot: bytes) -> None:
        self.boot = msgspec.msgpack.decode(boot, type=WorkerBoot)
        self.config = msgspec.msgpack.decode(self.boot.config, type=RoleConfig)
        self.state = RequestState()
        self.outbox = Outbox(self.boot.max_frame_bytes)
        self.server: Server | None = None
        self.engine: BatchEngine | None = None
        os.environ.setdefault("GGML_NO_BACKTRACE", "1")
        logging.basicConfig(level=logging.INFO)
        self._forward = ForwardingHandler(self.outbox)
        logging.getLogger("lilbee_workers").addHandler(self._forward)

    def load(self) -> bytes:
        """Load the model; an encoded ``Ready``, or ``LoadFailed`` with the reason."""
        progress = ProgressReporter(self.outbox)
        loaded = load_role(self.boot, self.state, progress, _node_id())
        if isinstance(loaded, LoadFailed):
            return codec.encode(loaded)
        self.server = Server(None, loaded.handler, self.state, self.config, self.boot)  # type: ignore[arg-type]
        if loaded.engine is not None:
            self.engine = loaded.engine
            threading.Thread(target=self._step_streams, name="batch-steps", daemon=True).start()
        return codec.encode(loaded.ready)

    def _step_streams(self) -> None:
        """The stepping thread of an actor that batches streams. It must not die
        quietly: an unexpected error ends the actor (Ray reports it gone, and the
        supervisor's rules take over, as for a crashed local worker)."""
        engine = self.engine
        assert engine is not None
        try:
            while self.server is not None:
                if engine.wait_for_work(0.5):
                    engine.step()
        except BaseException as exc:
            log.critical("batched stepping failed: %r", exc)
            os._exit(70)

    def _stream(self, request: ChatRequest | CompleteRequest) -> Iterator[bytes]:
        """A chat stream on the batch engine: its frames as the stepping thread makes
        them. A caller that leaves before the end cancels its stream alone."""
        assert self.engine is not None
        frames: queue.SimpleQueue[Frame] = queue.SimpleQueue()
        self.engine.submit(request, frames.put)
        finished = False
        try:
            while not finished:
                frame = frames.get()
                finished = isinstance(frame, (ChatResult, ErrorFrame))
                yield self._encode(frame, request.id)
        finally:
            if not finished:
                self.state.cancel_request(request.id)

    def call(self, raw: bytes) -> Iterator[bytes]:
        """One request's frames, encoded: its chunks as they come, then its final frame
        (the handler runs in a thread of its own, so chunks can be yielded as made)."""
        decoded = self._decode(raw)
        if isinstance(decoded, bytes):
            yield decoded
            return
        request, server = decoded
        if self.engine is not None and isinstance(request, (ChatRequest, CompleteRequest)):
            yield from self._stream(request)
            return
        frames: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()

        def run() -> None:
            try:
                frames.put(server.run(request, frames.put))
            finally:
                frames.put(None)

        self.state.begin(request.id)
        thread = threading.Thread(target=run, name=f"call-{request.id}", daemon=True)
        try:
            thread.start()
            while (frame := frames.get()) is not None:
                yield self._encode(frame, request.id)
        finally:
            self.state.cancel_request(request.id)  # a caller that left: stop the work
            thread.join()
            self.state.end()

    def call_once(self, raw: bytes) -> list[bytes]:
        """``call`` for a reply that does not stream: all its frames, in one list."""
        decoded = self._decode(raw)
        if isinstance(decoded, bytes):
            return [decoded]
        request, server = decoded
        sent: list[bytes] = []
        self.state.begin(request.id)
        try:
            final = server.run(request, lambda frame: sent.append(self._encode(frame, request.id)))
        finally:
            self.state.end()
        return [*sent, self._encode(final, request.id)]

    def _decode(self, raw: bytes) -> tuple[Request, Server] | bytes:
        """The request and the server to run it, or the encoded error to answer."""
        try:
            if self.server is None:
                raise ProtocolError("the model is not loaded")
            return codec.TO_WORKER.decode(raw, self.boot.max_frame_bytes), self.server
        except ProtocolError as exc:
            exc.role = self.boot.role
            return codec.encode(to_frame(exc, codec.request_id_of(raw)))

    def _encode(self, frame: Frame, request_id: int) -> bytes:
        try:
            return codec.encode(frame, self.boot.max_frame_bytes)
        except ProtocolError as exc:  # a reply over the frame cap
            error = InvalidRequest(f"reply too large: {exc.message}", role=self.boot.role)
            return codec.encode(to_frame(error, request_id))

    def beat(self, seq: int) -> list[bytes]:
        """The health frames since the last beat, then (``seq`` > 0) a ``Pong``."""
        frames = self.outbox.drain()
        if seq > 0:
            frames.append(codec.encode(pong(seq, self.state)))
        return frames

    def cancel(self, request_id: int) -> None:
        self.state.cancel_request(request_id)

    def stop(self) -> None:
        """Stop what runs now (the supervisor kills the actor next)."""
        self.state.cancel_current()

    def close(self) -> None:
        """Free the model and stop forwarding log records (for in-process use: an
        actor's process simply ends with it)."""
        logging.getLogger("lilbee_workers").removeHandler(self._forward)
        if self.server is not None:
            if self.engine is not None:
                self.engine.close()
            for llm in self.server.handler.models():
                llm.close()
            self.server = None


def _node_id() -> str:
    """The Ray node this actor runs on; empty outside Ray (never starts or joins one)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return str(ray.get_runtime_context().get_node_id())
