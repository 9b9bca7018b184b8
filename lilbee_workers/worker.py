"""The worker child process: bootstrap, load the model, serve the data pipe, and a
heartbeat thread on the health pipe.

Runs in a ``spawn``-started process. Nothing here is imported by the supervisor except
``worker_main``'s name.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

import msgspec

from lilbee_workers.config import RoleConfig
from lilbee_workers.errors import InvalidRequest, ModelError, ProtocolError, WorkerError
from lilbee_workers.logfile import tail_lines
from lilbee_workers.roles.base import RequestContext, Role
from lilbee_workers.transport import codec
from lilbee_workers.transport.channel import PipeChannel
from lilbee_workers.transport.frames import (
    Cancel,
    DebugRequest,
    Frame,
    LoadFailed,
    LogRecord,
    NoopRequest,
    NoopResult,
    Ping,
    Pong,
    Ready,
    Request,
    Shutdown,
    ShutdownAck,
)

_PR_SET_PDEATHSIG = 1
_REQUEST_TYPES = Request.__args__


class WorkerState:
    """What the heartbeat thread reports and how it reaches the serving thread."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.served = 0
        self.cancel = threading.Event()

    def begin(self, request_id: int) -> None:
        self.in_flight = request_id  # atomic under the GIL; read by the heartbeat thread
        if self.cancel.is_set():
            self.cancel.clear()

    def end(self) -> None:
        self.in_flight = 0
        self.served += 1

    def cancel_if_current(self, request_id: int) -> None:
        if self.in_flight == request_id:
            self.cancel.set()


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when the supervisor dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the heartbeat thread still exits when the health pipe closes
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def redirect_stdio(log_path: str) -> None:
    """Send fd 1 and 2 (llama.cpp's C output) and Python's stdio to the role's log."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ForwardingHandler(logging.Handler):
    """Sends Python log records to the supervisor over the health pipe."""

    def __init__(self, health: PipeChannel) -> None:
        super().__init__(logging.INFO)
        self.health = health

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.health.send(
                LogRecord(
                    level=record.levelno,
                    logger=record.name,
                    message=self.format(record),
                    created=record.created,
                )
            )
        except Exception:  # a log line must never take the worker down
            pass


def heartbeat(health: PipeChannel, state: WorkerState, shutdown_grace_s: float) -> None:
    """Serve the health pipe: PING -> PONG, CANCEL, SHUTDOWN -> ACK. Runs beside
    inference so a long call never starves liveness. Exits the process if the
    supervisor goes away."""
    while True:
        try:
            frame = health.recv()
        except (EOFError, OSError):
            os._exit(0)  # supervisor gone: nobody to serve
        except ProtocolError:
            continue
        if isinstance(frame, Ping):
            pong = Pong(
                seq=frame.seq, in_flight=state.in_flight, rss_bytes=rss_bytes(), served=state.served
            )
            _send_or_exit(health, pong)
        elif isinstance(frame, Cancel):
            state.cancel_if_current(frame.id)
        elif isinstance(frame, Shutdown):
            state.cancel.set()
            _send_or_exit(health, ShutdownAck())
            # The supervisor now closes the data pipe and the serving loop ends; if it
            # is stuck inside llama.cpp, leave anyway after the grace period.
            timer = threading.Timer(shutdown_grace_s, os._exit, args=(0,))
            timer.daemon = True
            timer.start()


def _send_or_exit(channel: PipeChannel, frame: Frame) -> None:
    try:
        channel.send(frame)
    except (OSError, ValueError):
        os._exit(0)


def run_debug(request: DebugRequest, state: WorkerState, generation: int) -> Frame:
    """Fault injection for tests (only when the role enables ``debug_requests``)."""
    if request.below_generation and generation >= request.below_generation:
        return NoopResult(id=request.id)
    if request.action == "abort":
        os.abort()
    if request.action == "exit":
        os._exit(3)
    if request.action == "exit0":
        os._exit(0)
    deadline = time.monotonic() + request.seconds
    while time.monotonic() < deadline:
        if request.action == "sleep" and state.cancel.is_set():
            break
        if request.action == "sleep":
            time.sleep(0.01)
    return NoopResult(id=request.id)


def worker_main(
    role: str,
    config_bytes: bytes,
    model_path: str,
    log_path: str,
    data_conn: Connection,
    health_conn: Connection,
    parent_pid: int,
    generation: int,
    max_frame_bytes: int,
) -> None:
    """Entry point of a worker process."""
    die_with_parent(parent_pid)
    # On an abort, ggml would attach gdb to print a backtrace: slow, and it buries
    # llama.cpp's own assert message (the line users need) under the backtrace.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    redirect_stdio(log_path)
    print(f"=== lilbee-workers {role} worker pid {os.getpid()} generation {generation}", flush=True)
    config = msgspec.msgpack.decode(config_bytes, type=RoleConfig)
    data = PipeChannel(data_conn, max_frame_bytes)
    health = PipeChannel(health_conn, max_frame_bytes)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger().addHandler(ForwardingHandler(health))
    state = WorkerState()
    threading.Thread(
        target=heartbeat,
        args=(health, state, config.cancel_grace_s),
        daemon=True,
        name="heartbeat",
    ).start()

    from lilbee_workers.roles import create_role

    started = time.monotonic()
    try:
        handler = create_role(role, config, model_path, log_path)
        model = handler.load()
    except Exception as exc:
        kind = "model" if isinstance(exc, (ModelError, ImportError)) else "internal"
        message = str(exc) if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}"
        logging.getLogger("lilbee_workers.worker").error("load failed: %s", message)
        data.send(LoadFailed(role=role, pid=os.getpid(), kind=kind, message=message))
        sys.exit(2)
    logging.getLogger("lilbee_workers.worker").info(
        "%s worker ready: %s in %.2fs", role, model_path, time.monotonic() - started
    )
    data.send(
        Ready(
            role=role,
            pid=os.getpid(),
            model=model_path,
            n_ctx=model.n_ctx,
            n_embd=model.n_embd,
            chat_template=model.chat_template,
            load_seconds=time.monotonic() - started,
        )
    )
    serve(data, handler, state, config, generation)


def serve(
    data: PipeChannel, handler: Role, state: WorkerState, config: RoleConfig, generation: int
) -> None:
    """Read one request, run it, write its reply frames; until the pipe closes."""
    while True:
        try:
            raw = data.recv_raw()
        except (EOFError, OSError):
            return
        try:
            request = codec.decode(raw, data.max_frame_bytes)
            if not isinstance(request, _REQUEST_TYPES):
                raise ProtocolError(f"a worker does not accept {type(request).__name__} frames")
        except ProtocolError as exc:
            exc.role = handler.kind
            data.send(exc.to_frame(codec.request_id_of(raw)))
            continue
        state.begin(request.id)
        try:
            reply = run_request(request, handler, state, config, generation, data)
        finally:
            state.end()
        try:
            data.send(reply)
        except ProtocolError as exc:  # a reply over the frame cap
            data.send(InvalidRequest(f"reply too large: {exc.message}").to_frame(request.id))


def run_request(
    request: Request,
    handler: Role,
    state: WorkerState,
    config: RoleConfig,
    generation: int,
    data: PipeChannel,
) -> Frame:
    """One request's final frame; handler errors become typed ``ErrorFrame``s."""
    try:
        if isinstance(request, NoopRequest):
            return NoopResult(id=request.id)
        if isinstance(request, DebugRequest):
            if not config.debug_requests:
                raise InvalidRequest("debug requests are disabled for this role")
            return run_debug(request, state, generation)
        if not isinstance(request, handler.accepts):
            raise InvalidRequest(
                f"the {handler.kind} worker does not serve {type(request).__name__}"
            )
        return handler.handle(request, RequestContext(request.id, data.send, state.cancel))
    except WorkerError as exc:
        exc.role = handler.kind
        exc.log_path = handler.log_path
        return exc.to_frame(request.id)
    except Exception as exc:  # llama.cpp raised: the request failed, the worker lives
        logging.getLogger("lilbee_workers.worker").exception("request %d failed", request.id)
        error = ModelError(
            f"{type(exc).__name__}: {exc}",
            role=handler.kind,
            log_path=handler.log_path,
            log_tail=tail_lines(handler.log_path, 5),
        )
        return error.to_frame(request.id)
