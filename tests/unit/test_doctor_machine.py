"""``doctor`` shows each role's memory (KV cache for ``parallel`` x ``n_ctx``, weights),
names the role that makes ``serve`` refuse a config, and warns when the workers' threads
exceed the cores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from lilbee_workers import memory
from lilbee_workers.cli.main import app
from lilbee_workers.config import RoleConfig

CLEAN_ENV: dict[str, str | None] = {"LILBEE_WORKERS_SOCKET": None, "LILBEE_WORKERS_CONFIG": None}


def doctor(tmp_path: Path, roles: str, *args: str) -> Result:
    sockets = tmp_path / "run"
    sockets.mkdir(mode=0o700, exist_ok=True)
    config = tmp_path / "w.toml"
    config.write_text(
        f'log_dir = "{tmp_path / "logs"}"\nsocket = "{sockets / "none.sock"}"\n{roles}'
    )
    return CliRunner().invoke(app, ["doctor", "--config", str(config), *args], env=CLEAN_ENV)


def checks(result: Result) -> dict[str, dict[str, Any]]:
    return {check["check"]: check for check in json.loads(result.stdout)["checks"]}


def test_each_roles_kv_cache_and_parallel_are_shown(model_path: str, tmp_path: Path) -> None:
    roles = (
        f'[roles.chat]\nmodel = "{model_path}"\nparallel = 4\nn_ctx = 1024\nn_threads = 1\n'
        f'[roles.embed]\nmodel = "{model_path}"\nn_threads = 1\n'
    )
    found = checks(doctor(tmp_path, roles, "--json"))
    chat = memory.role_memory("chat", RoleConfig(model=model_path, parallel=4, n_ctx=1024))
    assert chat is not None
    assert found["chat.memory"]["level"] == "ok"
    assert found["chat.memory"]["message"] == (
        f"parallel 4 x n_ctx 1024: KV cache {memory.size_text(chat.kv_bytes)} + weights "
        f"{memory.size_text(chat.weights_bytes)}"
    )
    assert found["embed.memory"]["message"].startswith("parallel 1 x n_ctx 2048: KV cache ")
    text = doctor(tmp_path, roles).stdout
    assert "chat.memory   parallel 4 x n_ctx 1024: KV cache" in text


def test_the_role_that_will_not_fit_is_an_error(
    model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 4 * 2**30)
    roles = (
        f'[roles.chat]\nmodel = "{model_path}"\nparallel = 16\nn_ctx = 32768\nreplicas = 2\n'
        "n_threads = 1\n"
    )
    result = doctor(tmp_path, roles, "--json")
    assert result.exit_code == 1
    finding = checks(result)["chat.memory"]
    assert finding["level"] == "error"
    assert finding["message"].startswith("roles.chat: parallel 16 x n_ctx 32768 needs a ")
    assert "per worker, x 2 workers = " in finding["message"]
    assert "4.00 GiB available" in finding["message"] and "lower parallel" in finding["fix"]


def test_threads_past_the_cores_are_a_warning(
    model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "usable_cores", lambda: 2)
    too_many = f'[roles.chat]\nmodel = "{model_path}"\nreplicas = 2\nn_threads = 2\n'
    finding = checks(doctor(tmp_path, too_many, "--json"))["threads"]
    assert finding["level"] == "warn"
    assert finding["message"].startswith("4 threads (chat 2 x 2; workers x n_threads) on 2 cores")
    assert finding["fix"].endswith("is at most 2")
    text = doctor(tmp_path, too_many).stdout
    assert "warn   threads" in text and "fix: set n_threads" in text
    fits = f'[roles.chat]\nmodel = "{model_path}"\nreplicas = 2\nn_threads = 1\n'
    assert checks(doctor(tmp_path, fits, "--json"))["threads"]["level"] == "ok"
