"""Public value types that cross the API: role states (the result structs live in
``transport.frames``, which re-exports nothing of the parent or child code)."""

from __future__ import annotations

import enum


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

    @property
    def serving(self) -> bool:
        """A worker is up and takes calls."""
        return self in (RoleState.READY, RoleState.BUSY)
