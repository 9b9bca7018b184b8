"""The command line: the typer app (``main``), its shared options and exit codes, the role
commands, pull, doctor, and how results look on a terminal.

``app`` is loaded on first use, so the service can import ``cli.progress`` without
building the whole command line (and the ``lilbee-workers`` entry point stays
``lilbee_workers.cli:app``)."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from lilbee_workers.cli.common import app

        importlib.import_module("lilbee_workers.cli.main")  # adds the commands to app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
