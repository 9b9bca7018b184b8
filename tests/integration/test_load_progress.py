"""A loading worker's progress, for real: llama.cpp's load progress callback in a gemma
worker, its frames over the health pipe, and the supervisor's status while it loads."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from conftest import FAST, wait_until
from lilbee_workers import RoleConfig, Supervisor, SupervisorConfig
from lilbee_workers.cli.output import state_text
from lilbee_workers.parent.process import WorkerProcess
from lilbee_workers.transport.codec import DEFAULT_MAX_FRAME_BYTES


def test_a_loading_worker_reports_rising_progress_up_to_one(
    model_path: str, tmp_path: Path
) -> None:
    fractions: list[float] = []
    config = RoleConfig(model=model_path, n_ctx=512, **FAST)
    worker = WorkerProcess(
        "chat",
        config,
        model_path,
        tmp_path / "chat.log",
        1,
        DEFAULT_MAX_FRAME_BYTES,
        on_progress=fractions.append,
    )
    try:
        worker.start()
        # The last frame left before READY, but on the other pipe: it may land just after.
        wait_until(lambda: bool(fractions) and fractions[-1] == 1.0, what="progress 1.0")
    finally:
        worker.stop(2)
    assert len(fractions) >= 3, fractions  # gemma has hundreds of tensors: several steps
    assert fractions == sorted(set(fractions)), fractions  # strictly rising
    assert 0.0 <= fractions[0] < 1.0
    assert worker.monitor is not None and worker.monitor.load_progress == 1.0


def test_status_shows_the_load_while_a_role_loads(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    sup = Supervisor(make_config({"chat": {}}))
    seen: list[float] = []
    try:
        sup.start(wait=False)
        while not sup.wait_started(0.002):
            status = sup.role_status("chat")
            if status.loading is not None:
                seen.append(status.loading)
                assert state_text(status).startswith("loading ")
        wait_until(lambda: sup.role_status("chat").load_progress == 1.0, what="progress 1.0")
        ready = sup.role_status("chat")
        assert ready.state == "ready" and ready.loading is None and state_text(ready) == "ready"
        # A restart loads anew: the status starts over from 0 and rises to 1 again.
        restarted: list[float] = []
        sup.restart("chat", wait=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = sup.role_status("chat")
            if status.loading is not None:
                restarted.append(status.loading)
            elif restarted and status.state == "ready":
                break
            time.sleep(0.002)
        wait_until(lambda: sup.role_status("chat").load_progress == 1.0, what="progress 1.0")
    finally:
        sup.close()
    for fractions in (seen, restarted):
        assert fractions, "the status never showed the load"  # at least its start, 0%
        assert fractions == sorted(fractions), fractions
        assert all(0.0 <= f <= 1.0 for f in fractions), fractions
    assert restarted[0] == 0.0, restarted
