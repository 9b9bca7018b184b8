"""What each ``doctor`` check gives: a ``Finding``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["ok", "warn", "error"]


@dataclass
class Finding:
    """One check's verdict."""

    check: str
    level: Level
    message: str
    fix: str = ""
