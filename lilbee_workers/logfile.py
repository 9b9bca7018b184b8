"""Each role's log file: where a worker's stdout/stderr (llama.cpp's C output) goes."""

from __future__ import annotations

import os
from pathlib import Path

MAX_LOG_BYTES = 10 * 1024 * 1024
"""Default size past which a role log is rotated to ``.1`` (at worker start, and by
the worker itself between requests)."""


def role_log_path(log_dir: Path, role: str) -> Path:
    return log_dir / f"{role}.log"


def rotate_if_large(path: Path, max_bytes: int = MAX_LOG_BYTES) -> None:
    try:
        if path.is_file() and path.stat().st_size > max_bytes:
            os.replace(path, path.with_suffix(path.suffix + ".1"))
    except OSError:
        pass  # a log we cannot rotate is still written to (or its writes dropped)


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
