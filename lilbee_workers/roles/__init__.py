"""One module per role; ``create_handler`` picks the handler for a role name."""

from __future__ import annotations

import importlib

from lilbee_workers.config import RoleConfig
from lilbee_workers.roles.base import RoleHandler

_MODULES = {
    "embed": ("lilbee_workers.roles.embed", "EmbedHandler"),
    "chat": ("lilbee_workers.roles.chat", "ChatHandler"),
    "rerank": ("lilbee_workers.roles.rerank", "RerankHandler"),
    "vision": ("lilbee_workers.roles.vision", "VisionHandler"),
}


def create_handler(kind: str, config: RoleConfig, model_path: str, log_path: str) -> RoleHandler:
    """The handler for ``kind`` (imported only in the worker that serves it)."""
    module_name, class_name = _MODULES[kind]
    role_class: type[RoleHandler] = getattr(importlib.import_module(module_name), class_name)
    return role_class(config, model_path, log_path)
