"""Targeted faults: death during model load, and a crash loop at load."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import children_of, wait_for_state
from lilbee_workers import Supervisor, SupervisorConfig, WorkerUnavailable
from tiny_models import write_tiny_reranker


def test_worker_killed_while_loading_is_started_again(sup: Supervisor) -> None:
    before = set(children_of(os.getpid()))
    restarting = threading.Thread(target=sup.restart, args=("chat",))
    restarting.start()
    deadline = time.monotonic() + 30
    victim = None
    while victim is None and time.monotonic() < deadline:
        fresh = set(children_of(os.getpid())) - before
        victim = next(iter(fresh), None)
        time.sleep(0.005)
    assert victim is not None, "no new worker appeared"
    os.kill(victim, signal.SIGKILL)
    restarting.join(60)
    assert not restarting.is_alive()
    wait_for_state(sup, "chat", "ready")
    assert sup.worker_pid("chat") != victim
    assert "died while loading the model" in sup.role_status("chat").last_exit
    assert sup.chat("Hi", max_tokens=2).collect().completion_tokens == 2


def test_crash_loop_at_load_opens_the_circuit_and_restart_recovers(
    make_config: Callable[..., SupervisorConfig], tmp_path: Path, model_path: str
) -> None:
    model = write_tiny_reranker(tmp_path / "rerank.gguf", duplicate_token=True)
    config = make_config(
        {
            "embed": {},
            "rerank": {"model": str(model), "n_ctx": 256, "max_restarts": 2},
        }
    )
    with Supervisor(config) as sup:
        wait_for_state(sup, "rerank", "failed", timeout=60)
        status = {s.role: s for s in sup.status()}
        assert "crashed" in status["rerank"].last_exit or "SIGABRT" in status["rerank"].last_exit
        started = time.monotonic()
        with pytest.raises(WorkerUnavailable) as caught:
            sup.rerank("q", ["d"])
        assert time.monotonic() - started < 0.5
        assert "GGML_ASSERT" in caught.value.log_tail  # llama.cpp's own reason
        assert sup.embed(["other roles serve on"]).shape == (1, 640)
        # The operator fixes the file and restarts the role.
        write_tiny_reranker(model)
        [after] = sup.restart("rerank")
        assert after.state == "ready"
        assert len(sup.rerank("bees", ["honey", "rust"])) == 2
        wait_for_state(sup, "embed", "ready")
