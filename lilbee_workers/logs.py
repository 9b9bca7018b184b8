"""Logging: structlog set-up for the supervisor's log stream (key=value or JSON, on
stderr), and each role's log file.

Workers' Python log records arrive over their health pipe as ``LogRecord`` frames and
are re-emitted tagged with role and pid (``parent.monitor``). llama.cpp's own C output
goes to each role's log file instead: the worker's stdout and stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Literal, TextIO, cast

import structlog


class _Stderr:
    """``sys.stderr`` as it is at each write: a progress display (``serve`` on a
    terminal) stands in for it a while, so log lines print above its bars."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    level: str = "info", fmt: Literal["console", "json"] = "console", colors: bool | None = None
) -> None:
    """Route structlog (and stdlib logging) to stderr at ``level``."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        use_colors = sys.stderr.isatty() if colors is None else colors
        renderer = structlog.dev.ConsoleRenderer(colors=use_colors)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (print() writes the text and the newline apart, and a
        # progress line from another thread could land between them).
        logger_factory=structlog.WriteLoggerFactory(cast(TextIO, _Stderr())),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=numeric, stream=_Stderr(), format="%(levelname)s %(name)s: %(message)s"
    )


MAX_LOG_BYTES = 10 * 1024 * 1024
"""Default size past which a role log is rotated to ``.1`` (at worker start, and by
the worker itself between requests)."""


def role_log_path(log_dir: Path, role: str, replica: int = 0) -> Path:
    """``<role>.log``; replicas after the first write ``<role>.<replica>.log``."""
    return log_dir / (f"{role}.log" if replica == 0 else f"{role}.{replica}.log")


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
