"""One module per role; ``create_role`` picks the handler for a role name."""

from __future__ import annotations

import importlib

from lilbee_workers.config import RoleConfig
from lilbee_workers.roles.base import Role

_MODULES = {
    "embed": ("lilbee_workers.roles.embed", "EmbedRole"),
    "chat": ("lilbee_workers.roles.chat", "ChatRole"),
    "rerank": ("lilbee_workers.roles.rerank", "RerankRole"),
    "vision": ("lilbee_workers.roles.vision", "VisionRole"),
}


def create_role(kind: str, config: RoleConfig, model_path: str, log_path: str) -> Role:
    """The handler for ``kind`` (imported only in the worker that serves it)."""
    module_name, class_name = _MODULES[kind]
    role_class: type[Role] = getattr(importlib.import_module(module_name), class_name)
    return role_class(config, model_path, log_path)
