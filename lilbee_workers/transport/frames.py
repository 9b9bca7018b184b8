"""Every frame that crosses a wire, as tagged msgspec Structs.

Three wires carry these frames:

* the **data pipe** (supervisor <-> worker): requests, streamed chunks, results, errors;
* the **health pipe** (supervisor <-> worker heartbeat thread): ping/pong, cancel,
  shutdown, the worker's log records and its model load progress;
* the **daemon socket** (client <-> daemon): the same requests and replies, plus
  status and restart.

Each frame names itself with a short tag (the ``k`` field), so one decoder takes the
union of all of them. Request ids (``id``) are echoed by every reply so a stale frame
from an earlier attempt is never taken for the answer to a new one.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from lilbee_workers.errors import ErrorKind
from lilbee_workers.types import ChatMessage, RerankItem, RoleStatus


class Frame(msgspec.Struct, tag_field="k", omit_defaults=True, forbid_unknown_fields=True):
    """Base of every frame."""


# --------------------------------------------------------------------------- requests


class EmbedRequest(Frame, tag="embed"):
    """Texts to embed; vectors come back as float32 bytes."""

    id: int
    texts: list[str]
    normalize: bool = True
    truncate: bool = False
    model: str | None = None  # a name from the role's models; None: its default


class ChatRequest(Frame, tag="chat"):
    """Messages to complete; the reply streams as ``ChatChunk`` then ``ChatResult``."""

    id: int
    messages: list[ChatMessage]
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    stop: list[str] = msgspec.field(default_factory=list)
    seed: int | None = None
    model: str | None = None  # a name from the role's models; None: its default


class CompleteRequest(Frame, tag="complete"):
    """A raw prompt to continue, no chat template (what a base model is good at); the
    reply streams as ``ChatChunk`` then ``ChatResult``. Served by the chat role."""

    id: int
    prompt: str
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    stop: list[str] = msgspec.field(default_factory=list)
    seed: int | None = None
    model: str | None = None  # a name from the role's models; None: its default


class RerankRequest(Frame, tag="rerank"):
    """A query and documents to score against it."""

    id: int
    query: str
    documents: list[str]
    top_n: int | None = None
    return_documents: bool = False
    truncate: bool = False
    model: str | None = None  # a name from the role's models; None: its default


class VisionRequest(Frame, tag="vision"):
    """An image (PNG or JPEG bytes) and a prompt; the reply streams like chat."""

    id: int
    image: bytes
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float = 0.0
    seed: int | None = None
    model: str | None = None  # a name from the role's models; None: its default


class NoopRequest(Frame, tag="noop"):
    """Does nothing in the worker; measures the round trip of the data path."""

    id: int
    role: str = ""  # which role's worker, when sent to the daemon


DebugAction = Literal["sleep", "abort", "exit", "exit0", "spin", "log", "wedge"]


class DebugRequest(Frame, tag="debug"):
    """Fault injection for tests; refused unless the role sets ``debug_requests``."""

    id: int
    action: DebugAction
    seconds: float = 0.0
    role: str = ""  # which role's worker, when sent to the daemon
    # Only misbehave while the worker's generation is below this number (0: always).
    # Lets a test say "crash on the first attempt only" without sharing state.
    below_generation: int = 0
    level: int = 20  # "log": the Python log level of the lines written
    count: int = 1  # "log": how many lines
    # "wedge" answers at once, and arms the worker so that its next request blocks for
    # good inside llama.cpp's abort callback (a decode wedged in C, pings still answered).


# --------------------------------------------------------------------------- boot


class WorkerBoot(Frame, tag="boot"):
    """Supervisor -> a freshly started worker, first frame on its data pipe: what to
    load and how. (Not in ``AnyFrame``: only a booting worker decodes it.)"""

    role: str
    config: bytes
    """The role's ``RoleConfig``, msgpack-encoded (the child decodes it typed)."""
    model_path: str
    log_path: str
    generation: int
    max_frame_bytes: int
    log_max_bytes: int
    warm_up: bool = False
    """Run one small computation after loading, so the first real call does not pay for
    paging the weights in (hot standby spares)."""


# --------------------------------------------------------------------------- replies


class Ready(Frame, tag="ready"):
    """The worker loaded its model and serves the data pipe."""

    role: str
    pid: int
    model: str
    n_ctx: int
    n_embd: int = 0
    chat_template: str | None = None
    load_seconds: float = 0.0
    node: str = ""
    """The Ray node the worker runs on (Ray backend); empty for a local worker."""
    slots: int = 1
    """Calls the worker runs at once (continuous batching); others it takes in turn."""
    kv_cache_bytes: int = 0
    """Bytes of the worker's KV cache (every slot's), as llama.cpp allocated them."""


class LoadFailed(Frame, tag="load_failed"):
    """The worker could not load its model; it exits after sending this."""

    role: str
    pid: int
    kind: str
    message: str


class EmbedResult(Frame, tag="embed_result"):
    """Embedding vectors: ``count`` rows of ``dim`` little-endian float32 values."""

    id: int
    dim: int
    count: int
    vectors: bytes
    prompt_tokens: int = 0


class BatchRequest(Frame, tag="batch"):
    """Several callers' embed (or rank rerank) requests, all of one role, coalesced into
    one worker batch by the supervisor (never sent by clients). Each part is checked on
    its own (a bad part fails alone) and answered in ``BatchResult``."""

    id: int
    parts: list[EmbedRequest | RerankRequest]
    model: str | None = None


class BatchResult(Frame, tag="batch_result"):
    """One answer per part of a ``BatchRequest``, in order."""

    id: int
    parts: list[EmbedResult | RerankResult | ErrorFrame]


class ChatChunk(Frame, tag="chunk"):
    """One piece of streamed text."""

    id: int
    index: int
    text: str
    tokens: int = 0
    """Completion tokens generated so far, this chunk's included (0: not counted)."""


class ChatResult(Frame, tag="chat_result"):
    """End of a chat or vision stream: the whole text and the token counts."""

    id: int
    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chunks: int = 0


class RerankResult(Frame, tag="rerank_result"):
    """Documents ordered by score, highest first."""

    id: int
    results: list[RerankItem]


class NoopResult(Frame, tag="noop_result"):
    """Reply to ``NoopRequest``."""

    id: int


class ErrorFrame(Frame, tag="error"):
    """A typed error; becomes a ``WorkerError`` subclass on the caller's side."""

    id: int
    kind: ErrorKind
    message: str
    role: str = ""
    retryable: bool = False
    log_path: str = ""
    log_tail: str = ""
    param: str = ""  # the request field at fault ("" when none is named)


# --------------------------------------------------------------------------- health


class Ping(Frame, tag="ping"):
    """Supervisor -> heartbeat thread."""

    seq: int


class Pong(Frame, tag="pong"):
    """Heartbeat thread -> supervisor, with cheap stats."""

    seq: int
    in_flight: int = 0
    rss_bytes: int = 0
    served: int = 0
    # Work units done so far (graph nodes computed); a busy worker whose count stands
    # still for ``stall_after_s`` is hung. None: this worker's work is not metered.
    progress: int | None = None


class Cancel(Frame, tag="cancel"):
    """Stop request ``id`` at the next token; the worker stays warm."""

    id: int


class Shutdown(Frame, tag="shutdown"):
    """Finish and exit."""


class ShutdownAck(Frame, tag="shutdown_ack"):
    """The worker will exit once its data pipe closes."""


class LogRecord(Frame, tag="log"):
    """A Python log record from the worker, forwarded to the supervisor's log stream."""

    level: int
    logger: str
    message: str
    created: float


class LoadProgress(Frame, tag="load_progress"):
    """How far the worker's model load has come (llama.cpp's progress callback), from
    0.0 to 1.0; sent while loading, before READY on the data pipe."""

    fraction: float


# --------------------------------------------------------------------------- daemon


class StatusRequest(Frame, tag="status"):
    """Ask the daemon for every role's status."""

    id: int


class StatusReply(Frame, tag="status_result"):
    """Every role's status."""

    id: int
    roles: list[RoleStatus]


class RestartRequest(Frame, tag="restart"):
    """Gracefully restart one role, or ``all``."""

    id: int
    role: str
    wait: bool = True


class RestartReply(Frame, tag="restart_result"):
    """Answer to restart, load and unload: the roles concerned, as they are now."""

    id: int
    roles: list[RoleStatus]


class LoadRequest(Frame, tag="load"):
    """Make ``model`` the role's default and load it now."""

    id: int
    role: str
    model: str


class UnloadRequest(Frame, tag="unload"):
    """Stop the role's worker to free its memory; the next call loads the model again."""

    id: int
    role: str


Request = (
    EmbedRequest
    | BatchRequest
    | ChatRequest
    | CompleteRequest
    | RerankRequest
    | VisionRequest
    | NoopRequest
    | DebugRequest
)
"""Work for a role's worker."""

ControlRequest = StatusRequest | RestartRequest | LoadRequest | UnloadRequest
"""What only the daemon answers."""


class SocketCall(Frame, tag="call"):
    """Client -> daemon: a request for a role's worker, with the caller's timeout
    (seconds; unset waits as long as the call takes). The daemon answers under ``id``."""

    id: int
    request: Request
    timeout_s: float | None = None


# One union per direction of each wire: a receiver decodes only what its peer may send,
# so a frame of the wrong kind is a ``ProtocolError`` at the codec, not a later check.

DataReply = (
    Ready
    | LoadFailed
    | EmbedResult
    | BatchResult
    | ChatChunk
    | ChatResult
    | RerankResult
    | NoopResult
    | ErrorFrame
)
"""Worker -> supervisor on the data pipe (the supervisor sends ``Request``s)."""

HealthCommand = Ping | Cancel | Shutdown
"""Supervisor -> worker's heartbeat thread."""

HealthReport = Pong | ShutdownAck | LogRecord | LoadProgress
"""Worker's heartbeat thread -> supervisor."""

SocketRequest = SocketCall | ControlRequest
"""Client -> daemon."""

SocketReply = (
    EmbedResult
    | ChatChunk
    | ChatResult
    | RerankResult
    | NoopResult
    | ErrorFrame
    | StatusReply
    | RestartReply
)
"""Daemon -> client."""

AnyFrame = Request | DataReply | HealthCommand | HealthReport | SocketRequest | SocketReply
"""Every frame (for tools and tests that read any wire)."""

ROLE_OF_REQUEST: dict[type, str] = {
    EmbedRequest: "embed",
    ChatRequest: "chat",
    CompleteRequest: "chat",
    RerankRequest: "rerank",
    VisionRequest: "vision",
}


def role_of(request: Request) -> str:
    """The role a request is for (noop and debug requests name theirs)."""
    if isinstance(request, (NoopRequest, DebugRequest)):
        return request.role
    if isinstance(request, BatchRequest):
        return role_of(request.parts[0]) if request.parts else "embed"
    return ROLE_OF_REQUEST[type(request)]


FINAL_REPLIES = (EmbedResult, BatchResult, ChatResult, RerankResult, NoopResult, ErrorFrame)
"""Frames that end a request."""
