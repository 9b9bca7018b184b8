"""Every role command takes ``--model NAME`` and hands it to the call, as the Python
API and HTTP do (the real switch is checked in tests/integration/test_models.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lilbee_workers.cli import common as cli_common
from lilbee_workers.cli.main import app
from lilbee_workers.errors import InvalidRequest


class Recorder:
    """Stands in for the daemon's client: notes the model each call names, then
    refuses the call (so nothing needs a real answer)."""

    def __init__(self) -> None:
        self.models: list[str | None] = []

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def __getattr__(self, method: str) -> Any:
        def call(*_: object, model: str | None = None, **__: object) -> None:
            self.models.append(model)
            raise InvalidRequest(f"{method}: recorded", role=method)

        return call


@pytest.mark.parametrize(
    "command",
    [["embed", "bees"], ["chat", "hi"], ["complete", "Honey is"], ["rerank", "q", "d"],
     ["vision", "IMAGE", "what?"]],
)  # fmt: skip
def test_role_commands_pass_the_model_name(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    command = [str(image) if part == "IMAGE" else part for part in command]
    recorder = Recorder()
    monkeypatch.setattr(cli_common, "connect", lambda *_: recorder)
    env: dict[str, str | None] = {"LILBEE_WORKERS_SOCKET": None, "LILBEE_WORKERS_CONFIG": None}
    runner = CliRunner()
    named = runner.invoke(app, [*command, "--model", "small", "--socket", "/x.sock"], env=env)
    assert named.exit_code == 1 and "recorded" in named.stderr, named.output
    plain = runner.invoke(app, [*command, "--socket", "/x.sock"], env=env)
    assert plain.exit_code == 1, plain.output
    assert recorder.models == ["small", None]
