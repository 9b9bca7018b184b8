"""Exit codes a script can tell apart: 2 is click's usage error (a typo in a command or
option), 69 (sysexits' EX_UNAVAILABLE) is "no daemon answers", on every client command,
with or without --json. No daemon is needed: the socket path leads nowhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from lilbee_workers.cli.main import app

EX_USAGE_CLICK = 2
EX_UNAVAILABLE = 69
CLEAN_ENV: dict[str, str | None] = {"LILBEE_WORKERS_SOCKET": None, "LILBEE_WORKERS_CONFIG": None}
README = Path(__file__).resolve().parents[2] / "README.md"
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=CLEAN_ENV)


@pytest.mark.parametrize(
    "args",
    [["stauts"], ["status", "--bogus-flag"], ["restart"], ["chat"], ["embed", "x", "--model"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.exit_code == EX_USAGE_CLICK, result.output


COMMANDS = [
    ["status"],
    ["models"],
    ["restart", "chat"],
    ["restart", "all", "--no-wait"],
    ["load", "chat", "small"],
    ["unload", "chat"],
    ["embed", "bees"],
    ["chat", "hi"],
    ["complete", "Honey is"],
    ["rerank", "bees", "honey"],
]


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("command", COMMANDS)
def test_no_daemon_exits_69_on_every_client_command(
    command: list[str], as_json: bool, tmp_path: Path
) -> None:
    socket = str(tmp_path / "nobody-listens.sock")
    result = run_cli(*command, "--socket", socket, *(["--json"] if as_json else []))
    assert result.exit_code == EX_UNAVAILABLE, result.output
    if as_json:
        assert json.loads(result.stdout)["error"]["kind"] == "unreachable"
    else:
        assert "nobody-listens.sock" in result.stderr


def test_vision_without_a_daemon_exits_69(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    result = run_cli("vision", str(image), "--socket", str(tmp_path / "none.sock"))
    assert result.exit_code == EX_UNAVAILABLE, result.output


def test_the_docs_give_the_same_table() -> None:
    line = re.search(r"Exit codes:.*?\n.*?\n", README.read_text())
    assert line and "69 no daemon" in line.group(0) and "2 usage error" in line.group(0)
    assert "| `69` | no daemon reachable" in OPERATIONS.read_text()
    assert "2 no daemon" not in OPERATIONS.read_text() + README.read_text()
