"""Where the daemon's socket is: the path a client uses, and where it came from."""

from __future__ import annotations

import os
from pathlib import Path

from lilbee_workers.config import SupervisorConfig, default_socket_path


def socket_path_for(
    explicit: str | os.PathLike[str] | None,
    config: SupervisorConfig | None,
    config_path: str | os.PathLike[str] | None = None,
) -> tuple[Path, str]:
    """The daemon socket a client uses, and where that path came from: ``explicit``
    (``--socket``; the CLI fills it from ``$LILBEE_WORKERS_SOCKET`` too), else the
    config's ``socket``, else ``default_socket_path()``."""
    if explicit is not None:
        from_env = os.environ.get("LILBEE_WORKERS_SOCKET")
        named = from_env and Path(from_env) == Path(explicit)
        return Path(explicit), "LILBEE_WORKERS_SOCKET" if named else "--socket"
    if config is not None and config.socket:
        return config.resolved_socket(), f"`socket` in {config_path or 'the config'}"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(default_socket_path()), "the default, $XDG_RUNTIME_DIR/lilbee-workers.sock"
    return Path(default_socket_path()), "the default, as XDG_RUNTIME_DIR is unset"
