"""A fake worker for the dispatcher's unit tests: no subprocess, no model.

It speaks the real frames over real pipe channels (a ``multiprocessing`` pipe pair),
and a thread plays the worker's side from a script: answer, fail, crash or hang per
request. "Crashing" closes its end of the data pipe and reports death like a reaped
process; ``kill`` does the same. So the dispatcher, ``attempt`` and ``policy`` run
exactly as they do against a real ``WorkerProcess``.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import Pipe
from multiprocessing.connection import wait
from typing import Any, Literal

from lilbee_workers.config import RoleConfig
from lilbee_workers.parent.handle import WorkerHandle
from lilbee_workers.parent.policy import StartFailed
from lilbee_workers.transport import codec
from lilbee_workers.transport.channel import PipeChannel
from lilbee_workers.transport.frames import (
    BatchRequest,
    BatchResult,
    ChatChunk,
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    ErrorFrame,
    Ready,
    Request,
)
from lilbee_workers.types import ChatMessage

Behaviour = Literal["answer", "crash", "hang", "error", "chunk_then_crash", "outside_kill"]
_pids = itertools.count(90001)


@dataclass
class Script:
    """What each worker generation does: ``start`` fails for generations listed in
    ``fail_start``; ``on_request[generation]`` lists behaviours for its requests in
    order (missing: answer)."""

    role: str = "embed"
    fail_start: set[int] = field(default_factory=set)
    fail_every_start: bool = False
    on_request: dict[int, list[Behaviour]] = field(default_factory=dict)
    hold_start: dict[int, threading.Event] = field(default_factory=dict)
    """Generations whose start waits for the event (a slow model load)."""
    workers: list[FakeWorker] = field(default_factory=list)

    def factory(
        self,
        config: RoleConfig,
        model_path: str,
        generation: int,
        on_exit: Callable[[WorkerHandle], None],
        warm_up: bool,
    ) -> FakeWorker:
        if not os.path.isfile(model_path):  # as the real local factory refuses it
            raise StartFailed(f"model file not found: {model_path}", crashed=False)
        worker = FakeWorker(self, config, model_path, generation, on_exit)
        self.workers.append(worker)
        return worker


class FakeWorker:
    """Satisfies ``WorkerHandle``; see the module docstring."""

    def __init__(
        self,
        script: Script,
        config: RoleConfig,
        model_path: str,
        generation: int,
        on_exit: Callable[[WorkerHandle], None],
    ) -> None:
        self.role = script.role
        self.script = script
        self.config = config
        self.model_path = model_path
        self.generation = generation
        self.on_exit = on_exit
        self.ready: Ready | None = None
        self.on_progress: Callable[[float], None] = lambda fraction: None
        self.kill_reason: str | None = None
        self.requests: list[Request] = []
        self._pid = next(_pids)
        self._dead = threading.Event()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self._pid

    def start(self, abandon: Callable[[], bool] = lambda: False) -> Ready:
        gate = self.script.hold_start.get(self.generation)
        while gate is not None and not gate.wait(0.05) and not abandon():
            pass
        if self.script.fail_every_start or self.generation in self.script.fail_start:
            self._dead.set()
            raise StartFailed(f"fake worker {self.generation} failed to load", crashed=True)
        ours, theirs = Pipe()
        health_ours, self._health_theirs = Pipe()
        self.data = PipeChannel(ours, codec.FROM_WORKER)
        self.health = PipeChannel(health_ours, codec.FROM_HEARTBEAT)
        self._theirs = PipeChannel(theirs, codec.TO_WORKER)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        ready = Ready(role=self.role, pid=self.pid, model=self.model_path, n_ctx=512, n_embd=1)
        self.ready = ready  # n_embd: the fake answers 1-float vectors
        return self.ready

    def _serve(self) -> None:
        plan = list(self.script.on_request.get(self.generation, []))
        while not self._dead.is_set():
            try:
                request = self._theirs.recv()
            except (EOFError, OSError, TypeError):  # TypeError: closed under us by _die
                return
            assert isinstance(request, (EmbedRequest, ChatRequest, BatchRequest))
            self.requests.append(request)
            behaviour = plan.pop(0) if plan else "answer"
            if behaviour in ("crash", "chunk_then_crash", "outside_kill"):
                self.outside_kill = behaviour == "outside_kill"
                if behaviour == "chunk_then_crash":
                    self._theirs.send(ChatChunk(id=request.id, index=0, text="par"))
                self._die(None)
                return
            if behaviour == "hang":
                self._dead.wait()
                return
            try:
                self._theirs.send(self._reply(request, behaviour))
            except OSError:  # crashed (closed) while it answered
                return

    def _reply(self, request: Request, behaviour: Behaviour) -> Any:
        if behaviour == "error":
            return ErrorFrame(id=request.id, kind="invalid_request", message="bad input")
        if isinstance(request, ChatRequest):
            return ChatResult(id=request.id, text=f"gen{self.generation}", finish_reason="stop")
        if isinstance(request, BatchRequest):  # coalesced embed calls: one answer each
            parts = [
                EmbedResult(id=part.id, dim=1, count=1, vectors=bytes(4)) for part in request.parts
            ]
            return BatchResult(id=request.id, parts=parts)
        return EmbedResult(id=request.id, dim=1, count=1, vectors=bytes(4))

    def _die(self, kill_reason: str | None) -> None:
        with self._lock:
            if self._dead.is_set():
                return
            if kill_reason is not None:
                self.kill_reason = kill_reason
            self._dead.set()
        self._theirs.close()
        self._health_theirs.close()
        self.on_exit(self)

    def crash_now(self) -> None:
        """Die between calls, as a worker killed from outside would."""
        self._die(None)

    # -------------------------------------------------------------- WorkerHandle

    def alive(self) -> bool:
        return self.ready is not None and not self._dead.is_set()

    def monitoring(self) -> bool:
        return True

    def wait_data(self, timeout: float, wake_fd: int = -1) -> tuple[bool, bool]:
        if wake_fd < 0:
            return self.data.poll(timeout), self._dead.is_set()
        ready = wait([self.data.conn, wake_fd], timeout)
        return self.data.conn in ready, self._dead.is_set()

    def vitals(self) -> dict[str, Any]:
        return {"pid": self.pid, "uptime_s": 0.0, "rss_bytes": 0}

    def log_tail(self, lines: int = 20) -> str:
        return f"fake log of generation {self.generation}"

    def exit_description(self) -> str:
        how = f" {self.kill_reason};" if self.kill_reason else ""
        if getattr(self, "outside_kill", False):  # as a real worker SIGKILLed from outside
            return f"fake worker {self.generation}{how} killed by signal SIGKILL"
        return f"fake worker {self.generation}{how} exited"

    def kill(self, reason: str) -> None:
        self._die(reason)

    def join(self, timeout: float) -> None:
        self._dead.wait(timeout)

    def stop(self, grace_s: float) -> None:
        self._die(None)
        self.close_data()

    def close_data(self) -> None:
        if self.ready is not None:
            self.data.close()


EMBED = EmbedRequest(id=7, texts=["x"])
"""A one-text embed request, for the replica and lifecycle tests."""


def chat(text: str) -> ChatRequest:
    return ChatRequest(id=7, messages=[ChatMessage(role="user", content=text)])


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds, or fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)
