"""lilbee-workers: a supervisor for local llama.cpp model workers.

One subprocess per role (embed, chat, rerank, vision), restarted when it crashes or
hangs, with the interrupted call retried once. Use it in-process (``Supervisor``) or
through the daemon's Unix socket (``Client``); both have the same methods.
"""

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
from lilbee_workers.transport.frames import ChatMessage, ChatResult, RerankItem, RoleStatus

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
