"""Reloads with real workers (issue 18, items 4, 6 and two log lines of 14): a reload
a role cannot start under is rolled back on every replica, reported as failed, not
stored, and tried again by the same reload later; a standby turned on by a reload
starts (and one turned off stops); at shutdown every worker's exit is logged, the
standby's as a stop, never as a SIGKILL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import structlog

from conftest import direct_embeddings, pid_alive, wait_until
from lilbee_workers import Supervisor, SupervisorConfig

TEXTS = ["honey bees fan the hive to dry the nectar", "the queen lays the eggs"]


def with_role(config: SupervisorConfig, role: str, **settings: Any) -> SupervisorConfig:
    roles = dict(config.roles)
    roles[role] = msgspec.structs.replace(roles[role], **settings)
    return msgspec.structs.replace(config, roles=roles)


@pytest.fixture(scope="module")
def reference(model_path: str) -> np.ndarray[Any, Any]:
    """TEXTS embedded by llama-cpp-python in this process, as the worker configures it."""
    return direct_embeddings(model_path, TEXTS)  # type: ignore[no-any-return]


def test_a_reload_the_role_cannot_start_under_is_rolled_back_and_tried_again(
    make_config: Callable[..., SupervisorConfig],
    model_path: str,
    tmp_path: Path,
    reference: np.ndarray[Any, Any],
) -> None:
    later = tmp_path / "later.gguf"
    later.write_bytes(b"GGUF" + bytes(4096))  # llama.cpp refuses it: the load fails
    config = make_config({"embed": {"replicas": 2, "kill_after_s": 300, "coalesce": False}})
    new = with_role(config, "embed", model=str(later), kill_after_s=7)
    with Supervisor(config) as sup:
        result = sup.reload(new)
        # The reference: the old settings. Every replica, and what is stored, is on them.
        replicas = sup._dispatchers["embed"].replicas
        assert [r.config for r in replicas] == [config.roles["embed"]] * 2
        assert sup.config.roles["embed"] == config.roles["embed"]
        assert result.restarted == [] and list(result.failed) == ["embed"], result
        assert "rolled back" in result.failed["embed"]
        status = sup.role_status("embed")
        assert status.state == "ready" and [r.state for r in status.replicas] == ["ready"] * 2
        assert np.abs(sup.embed(TEXTS) - reference).max() < 1e-5
        # The model is there now: the same reload, sent again, applies it everywhere.
        later.unlink()
        later.symlink_to(model_path)
        again = sup.reload(new)
        assert again.restarted == ["embed"] and again.failed == {}, again
        replicas = sup._dispatchers["embed"].replicas
        assert [(r.config.model, r.config.kill_after_s) for r in replicas] == [(str(later), 7)] * 2
        assert sup.config.roles["embed"] == new.roles["embed"]
        assert np.abs(sup.embed(TEXTS) - reference).max() < 1e-5


def test_a_standby_turned_on_by_a_reload_starts_and_one_turned_off_stops(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    config = make_config({"embed": {}})
    with Supervisor(config) as sup:
        assert sup.role_status("embed").standby_pid is None
        result = sup.reload(with_role(config, "embed", standby=True))
        wait_until(lambda: sup.role_status("embed").standby_pid is not None, 60, "a spare")
        assert result.restarted == ["embed"] and result.failed == {}
        status = sup.role_status("embed")
        spare = status.standby_pid
        assert spare is not None and pid_alive(spare) and spare != status.pid
        assert sup.embed(TEXTS).shape == (2, 640)
        sup.reload(config)  # standby off again: the spare is stopped
        assert sup.role_status("embed").standby_pid is None
        wait_until(lambda: not pid_alive(spare), 10, "the spare gone")


def test_shutdown_logs_every_worker_exit_and_the_standby_as_a_stop(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    grace = {"cancel_grace_s": 60.0}  # a busy machine's worker may take seconds to exit
    config = make_config({"embed": {"standby": True, **grace}, "chat": {"replicas": 2, **grace}})
    with structlog.testing.capture_logs() as logs:
        sup = Supervisor(config).start()
        try:
            wait_until(lambda: sup.role_status("embed").standby_pid is not None, 60, "a spare")
            embed, chat = sup.role_status("embed"), sup.role_status("chat")
            pids = {embed.pid, embed.standby_pid, *(r.pid for r in chat.replicas)}
            assert None not in pids and len(pids) == 4
        finally:
            sup.close()
    exits = {e["pid"]: e["reason"] for e in logs if e["event"] == "worker exited"}
    assert pids <= set(exits), f"no exit logged for {pids - set(exits)}"
    killed = {pid: exits[pid] for pid in pids if "SIGKILL" in exits[pid]}
    assert not killed, killed
    assert not [pid for pid in pids if pid_alive(pid)]
