"""One request on one worker, start to end: the per-attempt pipe protocol.

``run_attempt`` sends the request under a fresh id, relays chunks to the call, and
returns how the attempt ended as a value. It never kills a worker and never retries:
it says what should happen (``Lost.kill``), and the dispatcher does it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import msgspec
import structlog

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import InvalidRequest, ProtocolError
from lilbee_workers.parent.calls import Attempted
from lilbee_workers.parent.handle import WorkerHandle
from lilbee_workers.transport.frames import FINAL_REPLIES, AnyFrame, ChatChunk, ErrorFrame

log = structlog.get_logger("lilbee_workers.attempt")

_attempt_ids = itertools.count(1)
"""Request ids on the data pipes: unique per attempt, so a stale frame from an earlier
attempt is never taken for the answer to a new one."""
_TICK_S = 0.1  # how often a waiting attempt re-checks cancel and deadlines


def next_attempt_id() -> int:
    """A fresh request id for the data pipe (process-wide, so never reused)."""
    return next(_attempt_ids)


@dataclass(frozen=True)
class Answered:
    """The call got its final frame (``error``: an ``ErrorFrame``); ``frame`` is None
    when the supervisor answered it (a request too large to send)."""

    error: bool
    frame: AnyFrame | None = None


@dataclass(frozen=True)
class Lost:
    """The worker failed under the call, or must go.

    ``kill``: the reason to kill it (None when it is already dead). ``crashed``: whether
    this counts toward the circuit breaker (a worker killed because its caller gave up
    and it would not stop does not). ``abandoned``: the call was already answered."""

    reason: str
    kill: str | None = None
    crashed: bool = True
    abandoned: bool = False


Outcome = Answered | Lost


def run_attempt(worker: WorkerHandle, call: Attempted, config: RoleConfig) -> Outcome:
    """Run ``call`` once on ``worker`` until its final frame, a failure, or a deadline."""
    attempt_id = next_attempt_id()
    request = msgspec.structs.replace(call.request, id=attempt_id)
    try:
        worker.data.send(request)
    except ProtocolError as exc:
        call.fail(InvalidRequest(f"request too large: {exc.message}", role=call.role))
        return Answered(error=True)
    except (OSError, ValueError):
        return Lost(worker.exit_description())
    call.bind(worker.health, attempt_id)
    deadline = time.monotonic() + config.kill_after_s
    cancel_deadline: float | None = None
    try:
        while True:
            now = time.monotonic()
            if call.expires_at is not None and now >= call.expires_at:
                call.time_out()  # the caller's own timeout: cancel, answer WorkerTimeout
            if cancel_deadline is None and call.cancelled:
                call.send_cancel()
                cancel_deadline = now + config.cancel_grace_s
            if cancel_deadline is not None and now >= cancel_deadline:
                call.fail(call.cancelled_error())
                reason = f"ignored cancel for {config.cancel_grace_s:g}s"
                return Lost(reason, kill=reason, crashed=False, abandoned=True)
            if now >= deadline:
                reason = f"overran the {config.kill_after_s:g}s kill_after_s deadline"
                return Lost(reason, kill=reason)
            readable, dead = worker.wait_data(min(deadline - now, _TICK_S))
            if readable:
                try:
                    frame = worker.data.recv()
                except (EOFError, OSError):
                    return Lost("closed its data pipe")
                except ProtocolError as exc:
                    reason = f"sent an undecodable frame ({exc.message})"
                    return Lost(reason, kill=reason)
                if getattr(frame, "id", None) != attempt_id:
                    log.debug("dropped stale frame", role=call.role, frame=type(frame).__name__)
                    continue
                if isinstance(frame, ChatChunk):
                    call.deliver_chunk(frame)
                    continue
                if isinstance(frame, FINAL_REPLIES):
                    call.finish(frame)
                    return Answered(error=isinstance(frame, ErrorFrame), frame=frame)
            elif dead:
                return Lost("died")
    finally:
        call.unbind()
