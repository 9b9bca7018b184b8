"""docs/configuration.md documents every config key, with a meaning and the real
default written as TOML (or `N MiB`, `unset`, `required`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lilbee_workers.config import RoleConfig, SupervisorConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REQUIRED = object()
UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def doc_rows() -> dict[str, dict[str, tuple[str, str]]]:
    """Table rows (key -> (default, meaning)) under each `## ` heading."""
    tables: dict[str, dict[str, tuple[str, str]]] = {}
    section = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`\w+`", cells[0]):
            tables.setdefault(section, {})[cells[0].strip("`")] = (cells[1], cells[2])
    return tables


def table_for(struct: type[msgspec.Struct]) -> dict[str, tuple[str, str]]:
    heading = "[roles." if struct is RoleConfig else "Top level"
    [rows] = [rows for section, rows in doc_rows().items() if heading in section]
    return rows


def parse_default(cell: str) -> Any:
    text = cell.strip("`")
    if text == "required":
        return REQUIRED
    if text == "unset":
        return None
    sized = re.fullmatch(r"(\d+) (KiB|MiB|GiB)", text)
    if sized:
        return int(sized[1]) * UNITS[sized[2]]
    return msgspec.toml.decode(f"v = {text}")["v"]


@pytest.mark.parametrize("struct", [SupervisorConfig, RoleConfig])
def test_every_key_is_documented_with_its_real_default(struct: type[msgspec.Struct]) -> None:
    rows = table_for(struct)
    fields = msgspec.structs.fields(struct)
    assert sorted(rows) == sorted(f.name for f in fields), "docs and config keys differ"
    for field in fields:
        default_cell, meaning = rows[field.name]
        assert meaning, f"{field.name} has no meaning in docs/configuration.md"
        if field.required:
            expected = REQUIRED
        elif field.default is msgspec.NODEFAULT:
            expected = field.default_factory()
        else:
            expected = field.default
        assert parse_default(default_cell) == expected or (
            expected is REQUIRED and parse_default(default_cell) is REQUIRED
        ), f"{field.name}: docs say {default_cell}, the code's default is {expected!r}"
        assert not re.search(r"\b(None|False|True)\b|'", default_cell), default_cell


def test_doc_says_how_relative_model_paths_resolve() -> None:
    assert "working directory" in DOC.read_text()
