"""What every ``lilbee-workers`` command shares: the typer app, exit codes, the
``--config``/``--socket``/``--json`` options, and how a client command reaches the daemon
and reports its errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from lilbee_workers.client import Client
    from lilbee_workers.config import SupervisorConfig

app = typer.Typer(
    help="Supervise local llama.cpp model workers: one subprocess per role "
    "(embed, chat, rerank, vision), restarted when they crash or hang.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: rich's shows `<bool>` after every flag
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
"""click's own code for a command line it cannot parse (a typo in a command or option)."""
EXIT_NOT_READY = 3
EXIT_UNREACHABLE = 69
"""No daemon answers on the socket: sysexits' ``EX_UNAVAILABLE``, apart from usage errors."""


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="LILBEE_WORKERS_CONFIG",
        help="TOML config file; client commands take the daemon's socket from it.",
    ),
]
SocketOption = Annotated[
    Path | None,
    typer.Option(
        "--socket",
        envvar="LILBEE_WORKERS_SOCKET",
        help="The daemon's Unix socket; beats the config's `socket` "
        "(default: $XDG_RUNTIME_DIR/lilbee-workers.sock, or "
        "/tmp/lilbee-workers-$UID/lilbee-workers.sock without XDG_RUNTIME_DIR).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        metavar="NAME",
        help="One of the role's model names (see `models`); default: the role's default. "
        "The worker switches to it once free (it stays loaded).",
    ),
]


def load_settings(config: Path | None) -> SupervisorConfig | None:
    """The config file's settings, None without one; ``ConfigError`` if invalid."""
    from lilbee_workers.config import load_config

    return load_config(config) if config else None


def say_error(text: str) -> None:
    """One plain line (or several) on stderr: no markup, no wrapping inside paths."""
    typer.echo(f"error: {text}", err=True)


def client_for(socket_path: Path | None, config: Path | None = None) -> Client:
    """A client on the socket that ``socket_path_for`` picks."""
    from lilbee_workers.service.socket_paths import socket_path_for

    settings = load_settings(config)
    return connect(socket_path_for(socket_path, settings, config)[0], settings)


def connect(path: Path, settings: SupervisorConfig | None) -> Client:
    from lilbee_workers.client import Client
    from lilbee_workers.transport.codec import DEFAULT_MAX_FRAME_BYTES

    frame_cap = settings.max_frame_bytes if settings else DEFAULT_MAX_FRAME_BYTES
    return Client(path, max_frame_bytes=frame_cap)


def fail(error: Exception, as_json: bool = False, socket_source: str = "") -> NoReturn:
    from lilbee_workers.cli.output import error_json, error_text
    from lilbee_workers.errors import DaemonUnreachable

    if as_json:
        print(error_json(error, socket_source))
    else:
        say_error(error_text(error, socket_source))
    raise typer.Exit(EXIT_UNREACHABLE if isinstance(error, DaemonUnreachable) else EXIT_ERROR)


@contextmanager
def daemon(socket_path: Path | None, config: Path | None, as_json: bool) -> Iterator[Client]:
    """A client of the daemon; a ``WorkerError`` or ``ConfigError`` in the block is
    printed (as JSON with ``--json``) and exits with its code."""
    from lilbee_workers.errors import ConfigError, WorkerError
    from lilbee_workers.service.socket_paths import socket_path_for

    source = ""
    try:
        settings = load_settings(config)
        path, source = socket_path_for(socket_path, settings, config)
        with connect(path, settings) as client:
            yield client
    except (WorkerError, ConfigError) as exc:
        fail(exc, as_json, source)
