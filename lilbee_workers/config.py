"""Configuration: one msgspec Struct per role, loadable from TOML, validated at start."""

from __future__ import annotations

import difflib
import math
import os
import warnings
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from lilbee_workers.errors import ConfigError
from lilbee_workers.hub.cache import resolve_path
from lilbee_workers.listen import is_loopback, parse_listen
from lilbee_workers.logs import MAX_LOG_BYTES
from lilbee_workers.transport.codec import DEFAULT_MAX_FRAME_BYTES

MAX_SECONDS = 7 * 24 * 3600.0
"""Longest duration any ``*_s`` key accepts (a week): past it a value is a typo, and
an infinite one breaks the timers that use it."""
MAX_REPLICAS = 64  # workers one role may run, each with its own copy of the model

log = structlog.get_logger("lilbee_workers.config")

ROLE_KINDS = ("embed", "chat", "rerank", "vision")
"""The roles a supervisor can run, one worker each."""

Pooling = Literal["auto", "mean", "cls", "last", "none", "rank"]


class ModelEntry(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One model a role serves by name: ``[roles.<role>.models.<name>]``."""

    path: str
    """The GGUF file (``"default"``: bundled gemma 3 270M; ``"hf:ORG/REPO[:QUANT]"``: pulled)."""
    n_ctx: int | None = None
    mmproj: str | None = None
    chat_format: str | None = None


class RoleConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """How one role's worker loads its model and how the supervisor watches it."""

    model: str = ""
    """The default model: a name from ``models``, a GGUF path (``"default"``: bundled gemma
    3 270M), or ``"hf:ORG/REPO[:QUANT]"`` (pulled). Empty with ``models``: the first listed."""
    models: dict[str, ModelEntry] = msgspec.field(default_factory=dict)
    """Models requests may name, switched to when the worker frees up (see
    docs/models.md). Only these names are accepted from clients, never a path."""
    keep_alive_s: float = 0.0
    """Unload the model after this long without a call, and load it again on the next
    (frees its memory while idle). 0: keep it loaded."""
    n_ctx: int = 2048
    n_threads: int | None = None
    n_gpu_layers: int = 0
    n_batch: int = 2048
    n_ubatch: int = 512
    pooling: Pooling = "auto"
    """embed: ``auto`` uses the model's own pooling, or mean pooling if it has none."""
    prompt_cache: bool = False
    """chat/vision: reuse the previous call's matching prompt prefix (faster for long
    shared prompts). Off by default: with it on, an answer can depend on what the worker
    served before (greedy decoding may differ), so a retry may not repeat the first try."""
    chat_format: str | None = None
    """chat/vision: a llama-cpp-python chat format name; unset uses the model's template."""
    mmproj: str | None = None
    """vision: path to the multimodal projector (CLIP/mmproj GGUF)."""
    rerank_mode: Literal["rank", "generative"] = "rank"
    """rerank: ``rank`` needs a model with a rank head; ``generative`` scores P(yes)."""
    max_image_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    """vision: width x height cap, checked from the image header before any decoding."""
    kill_after_s: float = 300.0
    """Longest one call may run inside the worker: past it the worker is killed and
    restarted, and the call retried once. A last resort for a wedged llama.cpp, not the
    caller's timeout (that is each call's ``timeout=``, which cancels without a kill)."""
    request_timeout_s: float | None = None
    """Deprecated name of ``kill_after_s``; still read, with a warning."""
    start_timeout_s: float = 120.0
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 5.0
    cancel_grace_s: float = 5.0
    queue_size: int = 64
    max_batch_items: int = 2048
    """Most texts (embed), documents (rerank) or messages (chat) in one request; more is
    ``InvalidRequest``, answered before any worker is involved."""
    replicas: int = 1
    """Workers of this role side by side, each with its own copy of the model."""
    standby: bool = False
    """Keep one spare worker loaded and waiting: a crashed or hung worker is replaced at
    once (milliseconds, not a model load). Costs a second copy of the model in RAM."""
    coalesce: bool = True
    """embed and rank rerank: merge calls that queued while the worker was busy into one
    worker batch when it frees up (each caller still gets its own answer and deadline)."""
    coalesce_max_items: int = 256
    """Most texts (embed) or documents (rerank) in one coalesced batch."""
    coalesce_wait_ms: float = 0.0
    """embed: how long a batch waits for more calls to join (0: it takes what queued)."""
    max_restarts: int = 5
    """Crashes allowed within ``restart_window_s`` before the role goes ``failed``."""
    restart_window_s: float = 60.0
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 10.0
    failed_cooldown_s: float = 60.0
    """How long a failed role answers ``WorkerUnavailable`` before it tries again."""
    debug_requests: bool = False  # accept DebugRequest fault injection (tests only)
    num_cpus: float = 1.0
    """``backend = "ray"``: CPUs one replica's actor takes from Ray's scheduler."""
    num_gpus: float = 0.0
    """``backend = "ray"``: GPUs one replica's actor takes (fractions share a GPU)."""
    resources: dict[str, float] = msgspec.field(default_factory=dict)
    """``backend = "ray"``: custom Ray resources one actor needs, to pin it to nodes."""

    def __post_init__(self) -> None:
        if self.request_timeout_s is not None:
            message = "request_timeout_s is deprecated: it is the worker kill deadline, now named"
            warnings.warn(f"{message} kill_after_s", DeprecationWarning, stacklevel=2)
            self.kill_after_s = self.request_timeout_s
            self.request_timeout_s = None

    def validate(self, role: str) -> None:
        """Raise ``ConfigError`` naming the first bad key."""
        where = f"roles.{role}"
        positive = {
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_ubatch,
            "queue_size": self.queue_size,
            "max_batch_items": self.max_batch_items,
            "max_image_bytes": self.max_image_bytes,
            "coalesce_max_items": self.coalesce_max_items,
            "max_image_pixels": self.max_image_pixels,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{where}.{key} must be > 0, got {value}")
        times = {
            "kill_after_s": self.kill_after_s,
            "start_timeout_s": self.start_timeout_s,
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "heartbeat_timeout_s": self.heartbeat_timeout_s,
            "restart_window_s": self.restart_window_s,
        }
        for key, seconds in times.items():
            if not seconds > 0:
                raise ConfigError(f"{where}.{key} must be > 0 seconds, got {seconds}")
        durations = {
            **times,
            "cancel_grace_s": self.cancel_grace_s,
            "restart_backoff_s": self.restart_backoff_s,
            "restart_backoff_max_s": self.restart_backoff_max_s,
            "failed_cooldown_s": self.failed_cooldown_s,
        }
        for key, seconds in durations.items():
            check_duration(f"{where}.{key}", seconds)
        check_duration(f"{where}.coalesce_wait_ms", self.coalesce_wait_ms / 1000.0)
        if not 1 <= self.replicas <= (1 if self.standby else MAX_REPLICAS):
            raise ConfigError(f"{where}.replicas must be 1 to {MAX_REPLICAS} (1 with standby: a "
                              f"replica takes over at once), not {self.replicas}")  # fmt: skip
        _check_ray_asks(where, {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                **self.resources})  # fmt: skip
        if self.max_restarts < 0:
            raise ConfigError(f"{where}.max_restarts must be >= 0, got {self.max_restarts}")
        if not self.model and not self.models:
            raise ConfigError(f"{where}.model must name a GGUF file (or list models)")
        for name, entry in self.models.items():
            if not name or not entry.path:
                raise ConfigError(f"{where}.models.{name}: needs a name and a path")
            if entry.n_ctx is not None and entry.n_ctx <= 0:
                raise ConfigError(f"{where}.models.{name}.n_ctx must be > 0")
        check_duration(f"{where}.keep_alive_s", self.keep_alive_s)
        if self.keep_alive_s and self.standby:
            raise ConfigError(f"{where}: keep_alive_s unloads idle models; standby keeps one "
                              "loaded: choose one")  # fmt: skip
        if role == "vision" and not self.mmproj:
            uncovered = self.model not in self.models if self.model else not self.models
            if uncovered or not all(entry.mmproj for entry in self.models.values()):
                raise ConfigError(f"{where}.mmproj must name the multimodal projector GGUF")

    def resolved_model(self) -> str:
        """The model path, with ``default`` resolved to the bundled small model."""
        if self.model == "default":
            from lilbee_workers.models import default_model_path

            return default_model_path()
        return resolve_path(self.model)  # a path; an hf: name from the local model cache


class SupervisorConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The whole configuration: roles, logs, socket."""

    roles: dict[str, RoleConfig]
    log_dir: str = ""
    """Where each role's worker log goes; empty: ``$XDG_STATE_HOME/lilbee-workers``."""
    socket: str = ""
    """Daemon socket path; empty: ``$XDG_RUNTIME_DIR/lilbee-workers.sock``."""
    socket_mode: int = 0o600
    """Permissions of the socket file (0o660 with ``socket_group`` for shared use)."""
    socket_group: str = ""
    """A group whose members may use the socket (the socket is given to it)."""
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    """Largest frame on any wire, in bytes; a bigger length prefix is refused unread."""
    log_max_bytes: int = MAX_LOG_BYTES
    """A role log past this size is moved to ``<role>.log.1`` (by the worker itself,
    between requests, and at each worker start)."""
    max_connections: int = 256
    """Client connections the daemon holds at once; one more is answered ``Overloaded``."""
    frame_timeout_s: float = 10.0
    """Time allowed for the rest of a frame once its first byte has arrived, and for a
    client to take one reply frame; idle connections between frames are not limited."""
    log_format: Literal["console", "json"] = "console"
    log_level: str = "info"
    drain_timeout_s: float = 30.0
    http_listen: str = ""
    """``HOST:PORT`` for the OpenAI-compatible HTTP face (extra ``http``); empty: off."""
    http_api_key_file: str = ""
    """A file holding the bearer token HTTP clients must send (``Authorization: Bearer``);
    required when ``http_listen`` is not a loopback address."""
    http_max_body_bytes: int = 32 * 1024 * 1024
    """Largest HTTP request body; a bigger one is answered 413 before it is read whole."""
    backend: Literal["local", "ray"] = "local"
    """Where workers run: local processes, or Ray actors (extra ``ray``)."""
    ray_address: str = "auto"
    """The Ray cluster to join (``ray.init`` address): ``auto``, ``HOST:PORT``, ``local``."""
    auto_pull: bool = False  # serve pulls missing hf: models first (docs/configuration.md)

    def validate(self) -> SupervisorConfig:
        """Raise ``ConfigError`` naming the first bad key; return self."""
        if not self.roles:
            raise ConfigError("roles: configure at least one role")
        for role, role_config in self.roles.items():
            if role not in ROLE_KINDS:
                raise ConfigError(
                    f"roles.{role}: unknown role (choose from {', '.join(ROLE_KINDS)})"
                )
            role_config.validate(role)
            if self.backend == "ray" and role_config.standby:
                raise ConfigError(f"roles.{role}.standby: not with backend = \"ray\" (a dead "
                                  "spare goes unseen until pinged); use replicas")  # fmt: skip
        if self.max_frame_bytes < 1024:
            raise ConfigError(f"max_frame_bytes must be >= 1024, got {self.max_frame_bytes}")
        if self.log_max_bytes < 4096:
            raise ConfigError(f"log_max_bytes must be >= 4096, got {self.log_max_bytes}")
        check_duration("drain_timeout_s", self.drain_timeout_s)
        if self.max_connections <= 0:
            raise ConfigError(f"max_connections must be > 0, got {self.max_connections}")
        if not self.frame_timeout_s > 0:
            raise ConfigError(f"frame_timeout_s must be > 0 seconds, got {self.frame_timeout_s}")
        check_duration("frame_timeout_s", self.frame_timeout_s)
        if self.http_listen:
            host, _ = parse_listen(self.http_listen)
            if not is_loopback(host) and not self.http_api_key_file:
                raise ConfigError(
                    f"http_listen: {self.http_listen} is reachable from other machines; "
                    "set http_api_key_file (a file holding the bearer token) or bind 127.0.0.1"
                )
        if self.http_max_body_bytes < 1024:
            raise ConfigError(
                f"http_max_body_bytes must be >= 1024, got {self.http_max_body_bytes}"
            )
        if not 0 <= self.socket_mode <= 0o777:
            raise ConfigError(f"socket_mode must be an octal mode like 0o600 (0o660, not 660), "
                              f"got {self.socket_mode} = {self.socket_mode:#o}")  # fmt: skip
        return self

    def resolved_log_dir(self) -> Path:
        if self.log_dir:
            return Path(os.path.expanduser(self.log_dir))
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return Path(base) / "lilbee-workers"

    def resolved_socket(self) -> Path:
        return Path(os.path.expanduser(self.socket or default_socket_path()))


def _check_ray_asks(where: str, asks: dict[str, float]) -> None:
    for key, amount in asks.items():
        if not (math.isfinite(amount) and amount >= 0) or key in ("CPU", "GPU", "memory"):
            raise ConfigError(f"{where}.{key}: a number >= 0, and CPUs and GPUs as num_cpus "
                              f"and num_gpus (got {amount})")  # fmt: skip


def check_duration(key: str, seconds: float) -> None:
    """A duration must be a finite number of seconds in [0, a week]."""
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise ConfigError(
            f"{key} must be a finite number of seconds between 0 and {MAX_SECONDS:g}, got {seconds}"
        )


def default_socket_path() -> str:
    """``$LILBEE_WORKERS_SOCKET``, else ``$XDG_RUNTIME_DIR/lilbee-workers.sock``."""
    explicit = os.environ.get("LILBEE_WORKERS_SOCKET")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/lilbee-workers-{os.getuid()}"
    return os.path.join(runtime, "lilbee-workers.sock")


def load_config(path: str | os.PathLike[str]) -> SupervisorConfig:
    """Read and validate a TOML config file; errors name the bad key."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(data, source=str(path))


def parse_config(data: bytes | str, source: str = "<config>") -> SupervisorConfig:
    """Decode and validate TOML text."""
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        # Role tables one by one, so an error names the role (msgspec says `roles[...]`).
        roles = raw.get("roles", {}) if isinstance(raw, dict) else {}
        if isinstance(roles, dict):
            for name, table in roles.items():
                if isinstance(table, dict) and "request_timeout_s" in table:
                    log.warning(
                        "deprecated config key: use kill_after_s (same meaning: the worker "
                        "kill deadline of one call)",
                        key=f"roles.{name}.request_timeout_s",
                        source=source,
                    )
                try:
                    roles[name] = msgspec.convert(table, RoleConfig)
                except msgspec.ValidationError as exc:
                    raise ConfigError(f"roles.{name}.{_readable(str(exc), RoleConfig)}") from None
        config = msgspec.convert(raw, SupervisorConfig)
        return config.validate()
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_readable(str(exc), SupervisorConfig)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _readable(message: str, struct: type[msgspec.Struct]) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.n_ctx`" as "n_ctx: Expected ...";
    an unknown key of ``struct`` with the nearest known key as a suggestion."""
    if " - at `$" in message:
        text, where = message.rsplit(" - at `$", 1)
        return f"{where.rstrip('`').lstrip('.')}: {text}"
    if message.startswith("Object contains unknown field "):
        key = message.removeprefix("Object contains unknown field ").strip("`")
        near = difflib.get_close_matches(key, struct.__struct_fields__, n=1, cutoff=0.6)
        return f"{key}: unknown key" + (f" (did you mean `{near[0]}`?)" if near else "")
    return message


def default_config(roles: tuple[str, ...] = ("embed", "chat")) -> SupervisorConfig:
    """Roles on the bundled small model (gemma 3 270M), for demos and tests."""
    role_configs = {
        role: RoleConfig(model="default", n_ctx=2048, chat_format=None) for role in roles
    }
    return SupervisorConfig(roles=role_configs).validate()
