"""What ``status`` shows of a role's lifecycle: one snapshot, safe from any thread
(each attribute read once)."""

from __future__ import annotations

import os
import time
from typing import Any

from lilbee_workers import catalog
from lilbee_workers.errors import ConfigError
from lilbee_workers.parent.lifecycle import RoleLifecycle
from lilbee_workers.types import RoleState


def lifecycle_fields(life: RoleLifecycle) -> dict[str, Any]:
    """The ``RoleStatus`` fields the lifecycle owns."""
    state, worker, standby = life.state, life.worker, life.standby
    ready = worker.ready if worker is not None else None
    try:
        path = life.model_path or catalog.config_for(life.config, life.model_name).resolved_model()
    except ConfigError:  # an hf: model not pulled (the role failed, saying so)
        path = catalog.config_for(life.config, life.model_name).model
    return {
        "state": state.value,
        "model": path,
        "model_name": life.model_name,
        "models": [life.default_model]
        + [n for n in catalog.names(life.config) if n != life.default_model],
        "model_bytes": _file_size(path),
        "idle_s": round(max(0.0, time.monotonic() - life.last_used), 3),
        "generation": life.generation,
        "last_exit": life.failed_reason if state == RoleState.FAILED else life.last_exit,
        "chat_template": ready.chat_template if ready is not None else None,
        "standby_pid": standby.pid() if standby is not None else None,
        **(worker.vitals() if worker is not None and state.serving else {}),
    }


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
