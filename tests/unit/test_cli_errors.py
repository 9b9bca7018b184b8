"""How the CLI words errors: the worker log only where it exists and can help, and
the same facts as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from lilbee_workers.cli.main import app
from lilbee_workers.cli.output import error_json, error_text, restart_lines
from lilbee_workers.errors import (
    ConfigError,
    DaemonUnreachable,
    InvalidRequest,
    WorkerCrashed,
)
from lilbee_workers.types import RoleStatus


def test_input_errors_leave_out_the_worker_log(tmp_path: Path) -> None:
    log = tmp_path / "chat.log"
    log.write_text("llama.cpp said things\n")
    error = InvalidRequest("max_tokens must be > 0", role="chat", log_path=str(log), log_tail="x")
    assert error_text(error) == "max_tokens must be > 0"
    assert "log_path" not in json.loads(error_json(error))["error"]


def test_crash_errors_name_only_a_log_that_exists(tmp_path: Path) -> None:
    log = tmp_path / "embed.log"
    crashed = WorkerCrashed("embed worker failed", role="embed", log_path=str(log))
    assert str(log) not in error_text(crashed)  # never started: no file yet
    assert "log_path" not in json.loads(error_json(crashed))["error"]
    log.write_text("GGML_ASSERT\n")
    assert f"(worker log: {log})" in error_text(crashed)
    assert json.loads(error_json(crashed))["error"]["log_path"] == str(log)


def test_json_error_kinds() -> None:
    unreachable = DaemonUnreachable("cannot reach the daemon at /x.sock")
    document = json.loads(error_json(unreachable, "`socket` in w.toml"))["error"]
    assert document == {
        "kind": "unreachable",
        "message": "cannot reach the daemon at /x.sock",
        "socket_from": "`socket` in w.toml",
    }
    assert json.loads(error_json(ConfigError("w.toml: nctx: unknown key")))["error"]["kind"] == (
        "config"
    )


def test_restart_lines_say_what_really_happened() -> None:
    ready = RoleStatus(role="embed", state="ready", pid=41)
    failed = RoleStatus(role="chat", state="failed", last_exit="model file not found: /m.gguf")
    assert restart_lines([ready], waited=False) == ["embed: restart requested (was ready, pid 41)"]
    assert restart_lines([ready, failed], waited=True) == [
        "embed: ready (pid 41)",
        "chat: failed: model file not found: /m.gguf",
    ]


def test_every_bad_key_reaches_the_user_on_its_own_line(tmp_path: Path) -> None:
    """status (a client command) and serve name each bad key of the file, and --json
    lists them; exit 1 either way (nothing was started)."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[roles.embed]\nmodel = "m.gguf"\nnctx = 5\nqueue_size = 0\n')
    env: dict[str, str | None] = {"LILBEE_WORKERS_SOCKET": None, "LILBEE_WORKERS_CONFIG": None}
    for command in (["status"], ["serve"]):
        result = CliRunner().invoke(app, [*command, "--config", str(bad)], env=env)
        assert result.exit_code == 1, result.output
        lines = result.stderr.splitlines()
        assert any(line.strip().startswith("roles.embed.nctx: unknown key") for line in lines)
        assert any(line.strip().startswith("roles.embed.queue_size must be > 0") for line in lines)
    result = CliRunner().invoke(app, ["status", "--config", str(bad), "--json"], env=env)
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "config" and len(error["problems"]) == 2, error
