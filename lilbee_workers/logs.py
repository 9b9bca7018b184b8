"""structlog set-up for the supervisor's log stream (key=value or JSON, on stderr).

Workers' Python log records arrive over their health pipe as ``LogRecord`` frames and
are re-emitted here tagged with role and pid (see ``process.WorkerProcess._monitor``).
llama.cpp's own C output goes to each role's log file instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


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
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=numeric, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
