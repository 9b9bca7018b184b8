"""What the daemon says about a reload (issue 18, item 4): a role the reload could not
move is named, with the reason, in the log and in systemd's STATUS=, never reported as
restarted; settings only a restart applies are named too. A Supervisor that reloads
keeps the old settings of a role whose roll failed (so the same reload retries)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import structlog

from lilbee_workers.config import RoleConfig, SupervisorConfig
from lilbee_workers.parent.role_owner import Job, Outcome
from lilbee_workers.service.daemon import Daemon
from lilbee_workers.supervisor import ReloadResult, Supervisor
from lilbee_workers.types import RoleStatus


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []

    def notify(self, *assignments: str) -> None:
        self.sent.append(assignments)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1")


class FakeSupervisor:
    def __init__(self, config: SupervisorConfig, result: ReloadResult) -> None:
        self.config = config
        self.result = result

    def reload(self, config: SupervisorConfig) -> ReloadResult:
        return self.result

    def status(self) -> list[RoleStatus]:
        return [RoleStatus(role="embed", state="ready")]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    path = tmp_path / "workers.toml"
    path.write_text(f'[roles.embed]\nmodel = "{model}"\n')
    return path


def test_a_failed_roll_is_reported_in_the_log_and_status(config_file: Path) -> None:
    from lilbee_workers.config import load_config

    config = load_config(config_file)
    daemon = Daemon(config, config_path=config_file)
    why = "replica 1: model file not found: /x.gguf (rolled back to the old settings)"
    result = ReloadResult(restarted=[], failed={"embed": why}, needs_restart=[])
    daemon.supervisor = FakeSupervisor(config, result)  # type: ignore[assignment]
    daemon.notifier = Recorder()  # type: ignore[assignment]
    with structlog.testing.capture_logs() as logs:
        daemon._reload_config()
    statuses = [a for sent in daemon.notifier.sent for a in sent if a.startswith("STATUS=")]
    assert statuses and "reload failed: embed replica 1: model file not found" in statuses[-1]
    [done] = [e for e in logs if e["event"].startswith("config reloaded")]
    assert done["restarted"] == [] and done["failed"] == ["embed"]
    assert any("rolled back" in str(e.get("failed")) for e in logs if e["log_level"] == "error")


def test_supervisor_keeps_a_failed_roles_old_settings_and_names_restart_only_keys(
    tmp_path: Path,
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    old = SupervisorConfig(roles={"embed": RoleConfig(model=str(model)), "chat": RoleConfig(
        model=str(model))}, log_level="info")  # fmt: skip
    sup = Supervisor(old)
    outcomes = {"embed": Outcome(ok=False, reason="replica 0: no", rolled_back=True)}

    class Owned:
        def __init__(self, role: str) -> None:
            self.role = role

        def restart(self, config: RoleConfig | None = None) -> Job:
            job = Job("restart", lambda: Outcome())
            job.outcome = outcomes.get(self.role, Outcome())
            job.done.set()
            return job

    sup._dispatchers = {role: Owned(role) for role in old.roles}  # type: ignore[misc]
    roles = {r: msgspec.structs.replace(c, kill_after_s=7) for r, c in old.roles.items()}
    new = msgspec.structs.replace(old, roles=roles, log_level="debug", drain_timeout_s=5)
    result = sup.reload(new)
    assert result.restarted == ["chat"] and list(result.failed) == ["embed"]
    assert "rolled back" in result.failed["embed"]
    assert sup.config.roles["embed"] == old.roles["embed"]  # the next reload retries it
    assert sup.config.roles["chat"] == roles["chat"]
    assert sup.config.log_level == "info" and result.needs_restart == [
        "log_level 'debug' (running 'info')"
    ]
    assert sup.config.drain_timeout_s == 5  # applied: read at shutdown


def test_reload_applies_connection_limits_and_names_restart_only_settings(
    config_file: Path,
) -> None:
    """``max_connections`` and ``frame_timeout_s`` are documented as reloadable: the socket
    server must see them. ``log_level`` needs a restart: named, and kept as it runs."""
    from types import SimpleNamespace

    from lilbee_workers.config import load_config

    config = load_config(config_file)
    daemon = Daemon(config, config_path=config_file)  # its Supervisor, never started
    daemon.server = SimpleNamespace(config=config)  # type: ignore[assignment]
    daemon.notifier = Recorder()  # type: ignore[assignment]
    daemon.supervisor.status = lambda: []  # type: ignore[method-assign]
    text = config_file.read_text()
    config_file.write_text(
        'log_level = "debug"\nmax_connections = 3\nframe_timeout_s = 2.5\n' + text
    )
    daemon._reload_config()
    assert daemon.server.config.max_connections == 3  # type: ignore[attr-defined]
    assert daemon.server.config.frame_timeout_s == 2.5  # type: ignore[attr-defined]
    assert daemon.config.log_level == "info" == daemon.supervisor.config.log_level
    statuses = [a for sent in daemon.notifier.sent for a in sent if a.startswith("STATUS=")]
    assert "needs restart: log_level 'debug' (running 'info')" in statuses[-1]
