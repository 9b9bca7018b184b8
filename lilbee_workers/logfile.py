"""Each role's log file: where a worker's stdout/stderr (llama.cpp's C output) goes."""

from __future__ import annotations

import os
from pathlib import Path

MAX_LOG_BYTES = 10 * 1024 * 1024
"""A role log over this size is rotated to ``.1`` when a worker starts."""


def role_log_path(log_dir: Path, role: str) -> Path:
    return log_dir / f"{role}.log"


def rotate_if_large(path: Path) -> None:
    try:
        if path.stat().st_size > MAX_LOG_BYTES:
            os.replace(path, path.with_suffix(path.suffix + ".1"))
    except FileNotFoundError:
        pass


def tail_lines(path: str | os.PathLike[str], count: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last ``count`` non-empty lines of a text file ('' if it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return "\n".join(lines[-count:])
