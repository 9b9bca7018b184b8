"""`lilbee-workers doctor`: the mistakes users make with models, directories and the
daemon, each found and explained; exit 0 when all is well, 1 when something is wrong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from daemon_helpers import DaemonProcess, write_config
from lilbee_workers.cli.main import app

CLEAN_ENV: dict[str, str | None] = {"LILBEE_WORKERS_SOCKET": None, "LILBEE_WORKERS_CONFIG": None}


def doctor(config: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["doctor", "--config", str(config), *args], env=CLEAN_ENV)


def checks(result: Result) -> dict[str, dict[str, Any]]:
    """The JSON report's checks by name."""
    return {check["check"]: check for check in json.loads(result.stdout)["checks"]}


@pytest.fixture
def where(tmp_path: Path) -> dict[str, str]:
    """A log dir and a socket (no daemon on it) in a private directory."""
    sockets = tmp_path / "run"
    sockets.mkdir(mode=0o700)
    return {"log_dir": str(tmp_path / "logs"), "socket": str(sockets / "none.sock")}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, model_path: str) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("doctor-daemon")
    roles = {"embed": {"model": model_path, "n_ctx": 512}, "chat": {"model": model_path}}
    process = DaemonProcess(write_config(root / "serve.toml", roles, log_dir=str(root / "logs")))
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0


def test_all_good_with_a_running_daemon_exits_0_and_warns_about_the_base_model(
    daemon: DaemonProcess, model_path: str, tiny_reranker: str, tmp_path: Path
) -> None:
    roles = {"embed": {"model": model_path}, "chat": {"model": model_path}}
    config = write_config(
        tmp_path / "w.toml", roles, socket=str(daemon.socket), log_dir=str(tmp_path / "logs")
    )
    result = doctor(config)
    assert result.exit_code == 0, result.output
    assert "0 problems" in result.stdout
    assert "chat template" in result.stdout and "complete" in result.stdout
    found = checks(doctor(config, "--json"))
    assert found["embed.model"]["level"] == "ok"
    assert found["chat.model"]["level"] == "warn"
    assert found["daemon"]["level"] == "ok" and "chat ready" in found["daemon"]["message"]
    # a role the file has but the daemon does not serve is pointed out
    roles["rerank"] = {"model": tiny_reranker, "n_ctx": 256}
    write_config(config, roles, socket=str(daemon.socket), log_dir=str(tmp_path / "logs"))
    found = checks(doctor(config, "--json"))
    assert found["rerank.model"]["level"] == "ok", found["rerank.model"]
    assert found["daemon"]["level"] == "warn" and "rerank" in found["daemon"]["message"]


def test_missing_non_gguf_and_rankless_models_are_problems(
    model_path: str, tmp_path: Path, where: dict[str, str]
) -> None:
    text_file = tmp_path / "notes.gguf"
    text_file.write_text("these are not weights\n")
    roles = {
        "embed": {"model": "models/missing-embed.gguf"},
        "chat": {"model": str(text_file)},
        "rerank": {"model": model_path},
    }
    config = write_config(tmp_path / "w.toml", roles, **where)
    result = doctor(config, "--json")
    assert result.exit_code == 1
    found = checks(result)
    embed = found["embed.model"]
    assert embed["level"] == "error" and "does not exist" in embed["message"]
    assert "working directory" in embed["message"]
    assert found["chat.model"]["level"] == "error"
    assert "not a GGUF file" in found["chat.model"]["message"]
    rerank = found["rerank.model"]
    assert rerank["level"] == "error" and "rank" in rerank["message"]
    assert 'rerank_mode = "generative"' in rerank["fix"]
    assert found["daemon"]["level"] == "error"
    assert json.loads(result.stdout)["problems"] >= 4
    human = doctor(config)
    assert human.exit_code == 1 and "fix:" in human.stdout


def test_generative_rerank_and_vision_projectors(
    model_path: str, tiny_projector: str, tiny_reranker: str, tmp_path: Path, where: dict[str, str]
) -> None:
    roles = {
        "rerank": {"model": model_path, "rerank_mode": "generative"},
        "vision": {"model": model_path, "mmproj": tiny_projector},
    }
    found = checks(doctor(write_config(tmp_path / "a.toml", roles, **where), "--json"))
    assert found["rerank.model"]["level"] == "ok", found["rerank.model"]
    assert found["vision.mmproj"]["level"] == "ok", found["vision.mmproj"]
    # the projector and the language model swapped, and a reranker given as projector
    roles = {"vision": {"model": tiny_projector, "mmproj": tiny_reranker}}
    result = doctor(write_config(tmp_path / "b.toml", roles, **where), "--json")
    assert result.exit_code == 1
    found = checks(result)
    assert found["vision.model"]["level"] == "error"
    assert "projector" in found["vision.model"]["message"]
    assert found["vision.mmproj"]["level"] == "error"
    assert "vision encoder" in found["vision.mmproj"]["message"]


def test_unsafe_socket_and_log_directories(
    model_path: str, tmp_path: Path, where: dict[str, str]
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    roles = {"embed": {"model": model_path}}
    config = write_config(
        tmp_path / "w.toml", roles, socket=str(shared / "d.sock"), log_dir=where["log_dir"]
    )
    result = doctor(config, "--json")
    assert result.exit_code == 1
    found = checks(result)
    assert found["socket_dir"]["level"] == "error"
    assert "writable by group or others" in found["socket_dir"]["message"]
    assert found["log_dir"]["level"] == "ok"  # missing, but its parent is writable
    not_a_dir = tmp_path / "logs-file"
    not_a_dir.write_text("")
    config = write_config(
        tmp_path / "w.toml", roles, socket=where["socket"], log_dir=str(not_a_dir)
    )
    found = checks(doctor(config, "--json"))
    assert found["log_dir"]["level"] == "error" and "not a directory" in found["log_dir"]["message"]


def test_a_bad_config_is_reported_with_a_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "w.toml"
    config.write_text('[roles.embed]\nmodel = "m.gguf"\nn_ctxx = 5\n')
    result = doctor(config)
    assert result.exit_code == 1
    assert "did you mean `n_ctx`?" in result.stdout
    result = doctor(config, "--json")
    assert result.exit_code == 1
    assert checks(result)["config"]["level"] == "error"


def test_a_model_named_from_the_models_table_is_found_as_the_daemon_finds_it(
    model_path: str, tiny_embedder: str, tmp_path: Path, where: dict[str, str]
) -> None:
    """`model = "small"` names the `[roles.chat.models.small]` entry (the daemon serves
    it), not a file called small; every listed model is checked, each under its name."""
    config = tmp_path / "named.toml"
    config.write_text(
        f'log_dir = "{where["log_dir"]}"\nsocket = "{where["socket"]}"\n'
        f'[roles.chat]\nmodel = "small"\n'
        f'[roles.chat.models.small]\npath = "{model_path}"\n'
        f'[roles.chat.models.gone]\npath = "{tmp_path / "gone.gguf"}"\n'
        f'[roles.embed]\nmodel = "{tiny_embedder}"\n'
        f'[roles.embed.models.gemma]\npath = "{model_path}"\n'
    )
    found = checks(doctor(config, "--json"))
    small = found["chat.model"]
    assert small["level"] != "error", small
    assert small["message"].startswith(model_path), small  # the entry's file, judged
    gone = found["chat.models.gone"]
    assert gone["level"] == "error" and "gone.gguf does not exist" in gone["message"]
    assert "[roles.chat.models.gone]" in gone["fix"]
    assert tiny_embedder in found["embed.model"]["message"]
    assert found["embed.models.gemma"]["message"].startswith(model_path)


def test_every_bad_key_is_a_finding_of_its_own(tmp_path: Path) -> None:
    config = tmp_path / "w.toml"
    config.write_text('[roles.embed]\nmodel = "m.gguf"\nn_ctxx = 5\nqueue_size = 0\n')
    result = doctor(config, "--json")
    assert result.exit_code == 1
    messages = [c["message"] for c in json.loads(result.stdout)["checks"] if c["level"] == "error"]
    assert len(messages) == 2, messages
    assert "roles.embed.n_ctxx: unknown key (did you mean `n_ctx`?)" in messages[0]
    assert "roles.embed.queue_size must be > 0" in messages[1]
