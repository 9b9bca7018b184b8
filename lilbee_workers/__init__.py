"""lilbee-workers: a supervisor for local llama.cpp model workers.

One subprocess per role (embed, chat, rerank, vision), restarted when it crashes or
hangs, with the interrupted call retried once. Use it in-process (``Supervisor``) or
through the daemon's Unix socket (``Client``); both have the same methods.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lilbee_workers.api import ChatStream
    from lilbee_workers.client import Client
    from lilbee_workers.config import RoleConfig, SupervisorConfig, default_config, load_config
    from lilbee_workers.errors import (
        AccessDenied,
        Cancelled,
        ConfigError,
        DaemonUnreachable,
        InvalidRequest,
        ModelError,
        Overloaded,
        ProtocolError,
        WorkerCrashed,
        WorkerError,
        WorkerTimeout,
        WorkerUnavailable,
    )
    from lilbee_workers.supervisor import Supervisor
    from lilbee_workers.transport.frames import ChatResult
    from lilbee_workers.types import ChatMessage, RerankItem, RoleState, RoleStatus

_HOME = {
    "AccessDenied": "lilbee_workers.errors",
    "Cancelled": "lilbee_workers.errors",
    "ChatMessage": "lilbee_workers.types",
    "ChatResult": "lilbee_workers.transport.frames",
    "ChatStream": "lilbee_workers.api",
    "Client": "lilbee_workers.client",
    "ConfigError": "lilbee_workers.errors",
    "DaemonUnreachable": "lilbee_workers.errors",
    "InvalidRequest": "lilbee_workers.errors",
    "ModelError": "lilbee_workers.errors",
    "Overloaded": "lilbee_workers.errors",
    "ProtocolError": "lilbee_workers.errors",
    "RerankItem": "lilbee_workers.types",
    "RoleConfig": "lilbee_workers.config",
    "RoleState": "lilbee_workers.types",
    "RoleStatus": "lilbee_workers.types",
    "Supervisor": "lilbee_workers.supervisor",
    "SupervisorConfig": "lilbee_workers.config",
    "WorkerCrashed": "lilbee_workers.errors",
    "WorkerError": "lilbee_workers.errors",
    "WorkerTimeout": "lilbee_workers.errors",
    "WorkerUnavailable": "lilbee_workers.errors",
    "default_config": "lilbee_workers.config",
    "load_config": "lilbee_workers.config",
}
"""Where each public name lives. Imported on first use, so a worker process (which
imports this package first) does not load the supervisor, the client or numpy."""


def __getattr__(name: str) -> Any:
    try:
        module = _HOME[name]
    except KeyError:
        raise AttributeError(f"module 'lilbee_workers' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AccessDenied",
    "Cancelled",
    "ChatMessage",
    "ChatResult",
    "ChatStream",
    "Client",
    "ConfigError",
    "DaemonUnreachable",
    "InvalidRequest",
    "ModelError",
    "Overloaded",
    "ProtocolError",
    "RerankItem",
    "RoleConfig",
    "RoleState",
    "RoleStatus",
    "Supervisor",
    "SupervisorConfig",
    "WorkerCrashed",
    "WorkerError",
    "WorkerTimeout",
    "WorkerUnavailable",
    "default_config",
    "load_config",
]
