"""Real worker processes, as the ``WorkerFactory`` a dispatcher uses by default (the
unit tests pass a fake one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lilbee_workers.config import RoleConfig
from lilbee_workers.parent.handle import WorkerFactory, WorkerHandle
from lilbee_workers.parent.policy import StartFailed
from lilbee_workers.parent.process import WorkerProcess


def process_factory(
    role: str, log_path: Path, max_frame_bytes: int, log_max_bytes: int
) -> WorkerFactory:
    """Real worker processes. (A Ray actor's model is on its node: ``cluster.worker``
    lets the actor say if it is missing there.)"""

    def new_worker(
        config: RoleConfig,
        model_path: str,
        generation: int,
        on_exit: Callable[[WorkerHandle], None],
        warm_up: bool,
    ) -> WorkerHandle:
        if not Path(model_path).is_file():  # say so at once, not from a started process
            raise StartFailed(f"model file not found: {model_path}", crashed=False)
        return WorkerProcess(
            role,
            config,
            model_path,
            log_path,
            generation,
            max_frame_bytes,
            on_exit=on_exit,
            log_max_bytes=log_max_bytes,
            warm_up=warm_up,
        )

    return new_worker
