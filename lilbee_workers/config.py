"""Configuration: one msgspec Struct per role, loadable from TOML, validated at start."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from lilbee_workers.config_problems import (
    convert_all,
    duration_problems,
    not_refused,
    parallel_problems,
    raise_all,
    ray_ask_problems,
    timing_problems,
)
from lilbee_workers.errors import ConfigError
from lilbee_workers.hub.cache import resolve_path
from lilbee_workers.listen import is_loopback, parse_listen
from lilbee_workers.logs import MAX_LOG_BYTES
from lilbee_workers.transport.codec import DEFAULT_MAX_FRAME_BYTES

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
    request_timeout_s: float | None = None  # deprecated name of kill_after_s; still read
    start_timeout_s: float = 120.0
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 5.0
    stall_after_s: float | None = 30.0  # busy, no llama.cpp progress this long: hung (0: off)
    quarantine_s: float = 300.0  # a poison request is refused at once this long (0: off)
    cancel_grace_s: float = 5.0
    queue_size: int = 64
    max_batch_items: int = 2048
    """Most texts (embed), documents (rerank) or messages (chat) in one request; more is
    ``InvalidRequest``, answered before any worker is involved."""
    replicas: int = 1
    """Workers of this role side by side, each with its own copy of the model."""
    parallel: int = 1
    """chat: streams one worker generates at once (continuous batching: one copy of the
    model, one decode step for all of them; the KV cache holds ``parallel`` x ``n_ctx``
    tokens). 1: one call at a time, each answer exactly what a solo call gives; above 1
    a temperature-0 answer may depend on what runs beside it (docs/performance.md)."""
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
        """Raise ``ConfigError`` naming every bad key."""
        raise_all(self.problems(role))

    def problems(self, role: str) -> list[str]:
        """One line per bad key, each naming it (``roles.<role>.<key>``)."""
        where, found = f"roles.{role}", list[str]()
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
                found.append(f"{where}.{key} must be > 0, got {value}")
        found += timing_problems(where, self)
        found += duration_problems(f"{where}.coalesce_wait_ms", self.coalesce_wait_ms / 1000.0)
        if not 1 <= self.replicas <= (1 if self.standby else MAX_REPLICAS):
            found.append(f"{where}.replicas must be 1 to {MAX_REPLICAS} (1 with standby: a "
                         f"replica takes over at once), not {self.replicas}")  # fmt: skip
        found += parallel_problems(where, role, self.parallel)
        asks = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, **self.resources}
        found += ray_ask_problems(where, asks)
        if self.max_restarts < 0:
            found.append(f"{where}.max_restarts must be >= 0, got {self.max_restarts}")
        if not self.model and not self.models:
            found.append(f"{where}.model must name a GGUF file (or list models)")
        for name, entry in self.models.items():
            if not name or not entry.path:
                found.append(f"{where}.models.{name}: needs a name and a path")
            if entry.n_ctx is not None and entry.n_ctx <= 0:
                found.append(f"{where}.models.{name}.n_ctx must be > 0")
        found += duration_problems(f"{where}.keep_alive_s", self.keep_alive_s)
        if self.keep_alive_s and self.standby:
            found.append(f"{where}: keep_alive_s unloads idle models; standby keeps one "
                         "loaded: choose one")  # fmt: skip
        if role == "vision" and not self.mmproj:
            uncovered = self.model not in self.models if self.model else not self.models
            if uncovered or not all(entry.mmproj for entry in self.models.values()):
                found.append(f"{where}.mmproj must name the multimodal projector GGUF")
        return found

    def batch_step_tokens(self) -> int:
        """Tokens one step of a batching chat worker decodes at most (one llama.cpp
        ubatch; more than ``parallel`` so every running stream gets its token)."""
        return max(min(self.n_batch, self.n_ubatch), self.parallel + 1)

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
        """Raise ``ConfigError`` naming every bad key; return self."""
        raise_all(self.problems())
        return self

    def problems(self) -> list[str]:
        """One line per bad key in the whole config, each naming it."""
        found: list[str] = []
        if not self.roles:
            found.append("roles: configure at least one role")
        for role, role_config in self.roles.items():
            if role not in ROLE_KINDS:
                found.append(f"roles.{role}: unknown role (choose from {', '.join(ROLE_KINDS)})")
                continue
            found += role_config.problems(role)
            if self.backend == "ray" and role_config.standby:
                found.append(f"roles.{role}.standby: not with backend = \"ray\" (a dead "
                             "spare goes unseen until pinged); use replicas")  # fmt: skip
        if self.max_frame_bytes < 1024:
            found.append(f"max_frame_bytes must be >= 1024, got {self.max_frame_bytes}")
        if self.log_max_bytes < 4096:
            found.append(f"log_max_bytes must be >= 4096, got {self.log_max_bytes}")
        found += duration_problems("drain_timeout_s", self.drain_timeout_s)
        if self.max_connections <= 0:
            found.append(f"max_connections must be > 0, got {self.max_connections}")
        if not self.frame_timeout_s > 0:
            found.append(f"frame_timeout_s must be > 0 seconds, got {self.frame_timeout_s}")
        found += duration_problems("frame_timeout_s", self.frame_timeout_s)
        try:
            host = parse_listen(self.http_listen)[0] if self.http_listen else ""
        except ConfigError as exc:
            found.append(str(exc))
        else:
            if host and not is_loopback(host) and not self.http_api_key_file:
                found.append(
                    f"http_listen: {self.http_listen} is reachable from other machines; "
                    "set http_api_key_file (a file holding the bearer token) or bind 127.0.0.1"
                )
        if self.http_max_body_bytes < 1024:
            found.append(f"http_max_body_bytes must be >= 1024, got {self.http_max_body_bytes}")
        if not 0 <= self.socket_mode <= 0o777:
            found.append(f"socket_mode must be an octal mode like 0o600 (0o660, not 660), "
                         f"got {self.socket_mode} = {self.socket_mode:#o}")  # fmt: skip
        return found

    def resolved_log_dir(self) -> Path:
        if self.log_dir:
            return Path(os.path.expanduser(self.log_dir))
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return Path(base) / "lilbee-workers"

    def resolved_socket(self) -> Path:
        return Path(os.path.expanduser(self.socket or default_socket_path()))


def check_duration(key: str, seconds: float) -> None:
    """A duration must be a finite number of seconds in [0, a week]."""
    raise_all(duration_problems(key, seconds))


def default_socket_path() -> str:
    """``$LILBEE_WORKERS_SOCKET``, else ``$XDG_RUNTIME_DIR/lilbee-workers.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/lilbee-workers-{os.getuid()}"
    return os.environ.get("LILBEE_WORKERS_SOCKET") or os.path.join(runtime, "lilbee-workers.sock")


def load_config(path: str | os.PathLike[str]) -> SupervisorConfig:
    """Read and validate a TOML config file; errors name the bad key."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(data, source=str(path))


def parse_config(data: bytes | str, source: str = "<config>") -> SupervisorConfig:
    """Decode and validate TOML text; ``ConfigProblems`` lists every bad key."""
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    problems: list[str] = []
    refused: list[str] = []  # keys reported and left out, so the rest is still checked
    roles = raw.get("roles", {}) if isinstance(raw, dict) else {}
    if isinstance(roles, dict):
        # Role tables one by one, so an error names the role (msgspec says `roles[...]`).
        converted = {}
        for name, table in roles.items():
            if isinstance(table, dict) and "request_timeout_s" in table:
                log.warning(
                    "deprecated config key: use kill_after_s (same meaning: the worker "
                    "kill deadline of one call)",
                    key=f"roles.{name}.request_timeout_s",
                    source=source,
                )
            role, found = convert_all(table, RoleConfig, f"roles.{name}.", refused)
            problems += found
            if role is not None:
                converted[name] = role
        if roles and not converted:  # each table said what is wrong with it: not also "none"
            refused.append("roles")
        raw["roles"] = converted
    config, found = convert_all(raw, SupervisorConfig, "", refused)
    problems += found
    if config is not None:
        problems += not_refused(config.problems(), refused)
    raise_all(problems, source)
    assert config is not None
    return config


def default_config(roles: tuple[str, ...] = ("embed", "chat")) -> SupervisorConfig:
    """Roles on the bundled small model (gemma 3 270M), for demos and tests."""
    role_configs = {
        role: RoleConfig(model="default", n_ctx=2048, chat_format=None) for role in roles
    }
    return SupervisorConfig(roles=role_configs).validate()
