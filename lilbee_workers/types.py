"""Public value types: what callers pass and get back besides frames. They import
nothing of ours, so the wire (``transport``), the worker and the supervisor share them."""

from __future__ import annotations

import enum

import msgspec


class RoleState(enum.StrEnum):
    """Where a role is in its life; ``status`` shows the value."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DRAINING = "draining"
    CRASHED = "crashed"
    RESTARTING = "restarting"
    FAILED = "failed"
    UNLOADED = "unloaded"
    """No worker, by ``unload`` or ``keep_alive_s``: the next call loads the model."""
    DEGRADED = "degraded"
    """Some of the role's replicas serve, others are down or coming back."""

    @property
    def serving(self) -> bool:
        """A worker is up and takes calls."""
        return self in (RoleState.READY, RoleState.BUSY, RoleState.DEGRADED)


class ChatMessage(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One chat message (OpenAI-style role/content)."""

    role: str
    content: str


class RerankItem(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One scored document."""

    index: int
    score: float
    document: str | None = None


LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000
)  # fmt: skip
"""Upper bounds of the call-latency histogram's buckets (a last one, +Inf, follows)."""


class RoleStatus(msgspec.Struct):
    """What ``status`` shows for one role."""

    role: str
    state: str
    pid: int | None = None
    node: str = ""
    """The Ray node id its worker runs on (``backend = "ray"``); empty when local."""
    model: str = ""
    """The model file the worker serves (or will)."""
    model_name: str = ""
    """Its name, as requests name it."""
    models: list[str] = msgspec.field(default_factory=list)
    """Every model name the role serves; the default first."""
    model_bytes: int = 0
    idle_s: float = 0.0
    """Seconds since the role last finished a call."""
    uptime_s: float = 0.0
    restarts: int = 0
    generation: int = 0
    """How many workers this role has started; the current one is number ``generation``."""
    last_exit: str = ""
    in_flight: int = 0
    """Calls running on the worker: up to ``slots`` (``parallel``) at once."""
    slots: int = 1
    """Calls one worker runs at once (the chat role's ``parallel``; replicas add up)."""
    stream_tokens_per_s: list[float] = msgspec.field(default_factory=list)
    """Each running stream's generation rate so far (completion tokens per second)."""
    kv_cache_bytes: int = 0
    """The worker's KV cache (all its slots), as llama.cpp sized it; 0 when unknown."""
    queued: int = 0
    served: int = 0
    errors: int = 0
    cancelled: int = 0
    """Calls their caller cancelled while a worker ran them (a stream cut short, a
    client gone): neither served nor an error. One cut short by its own timeout is an
    error (its caller got ``WorkerTimeout``)."""
    retried: int = 0
    """Calls re-run on a fresh worker after their worker died or hung under them."""
    retried_ok: int = 0
    """Of those, the ones that then got their answer."""
    quarantined: int = 0
    """Sends refused at once because their request is quarantined (it killed its worker
    on every attempt within ``quarantine_s``); one count for the whole role."""
    p50_ms: float | None = None
    p99_ms: float | None = None
    rss_bytes: int = 0
    log_path: str = ""
    chat_template: str | None = None
    standby_pid: int | None = None
    """The hot standby worker's pid, when the role keeps one loaded (``standby``)."""
    batch_sizes: dict[str, int] = msgspec.field(default_factory=dict)
    """Embed worker batches by number of texts (power-of-two buckets): coalescing at work."""
    batch_tokens: dict[str, int] = msgspec.field(default_factory=dict)
    """The same batches by number of tokens."""
    latency_buckets: list[int] = msgspec.field(default_factory=list)
    """Calls by latency since start: one count per ``LATENCY_BUCKETS_MS`` bound, then +Inf
    (not cumulative)."""
    latency_sum_ms: float = 0.0
    tokens_generated: int = 0
    """Completion tokens of every chat, completion and vision answer."""
    replica: int | None = None
    """Which replica of its role this is (set only in ``replicas``)."""
    replicas: list[RoleStatus] = msgspec.field(default_factory=list)
    """Each replica's own status, when the role runs more than one (``replicas``); the
    fields above then add them up (counters) or describe the role as a whole."""
    load_progress: float | None = None
    """How far the latest model load has come, 0.0 to 1.0 (llama.cpp's own count of the
    weights read; None until a worker reports it). It means something while ``state`` is
    starting or restarting (``loading``); once the model is loaded it stays at 1.0."""

    @property
    def loading(self) -> float | None:
        """The load's progress while a worker loads the model, else None."""
        if self.state in (RoleState.STARTING, RoleState.RESTARTING):
            return self.load_progress
        return None
