"""The ``lilbee-workers`` command line (typer). Client commands find the socket as
``config.socket_path_for`` says; errors go to stderr as plain lines, or with ``--json``
to stdout as ``{"error": {"kind": ..., "message": ...}}``, with the same exit codes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lilbee_workers.cli import pull as pull_commands
from lilbee_workers.cli import roles as role_commands
from lilbee_workers.cli.common import (
    EXIT_ERROR,
    EXIT_NOT_READY,
    ConfigOption,
    JsonOption,
    SocketOption,
    app,
    daemon,
    fail,
    load_settings,
    say_error,
)


@app.callback()
def _group() -> None:
    """Supervise local llama.cpp model workers."""


@app.command()
def demo(
    config: Annotated[
        Path | None, typer.Option(help="TOML config; default: embed + chat on gemma 3 270M")
    ] = None,
) -> None:
    """Try it in-process: embed, stream a completion, show status.

    Runs a supervisor in this process (no daemon): embeds a few texts, streams the
    continuation of a prompt (the bundled model is a base model: see `complete`) and
    prints each role's status.
    """
    from lilbee_workers.cli.demo import run_demo
    from lilbee_workers.config import default_config
    from lilbee_workers.errors import ConfigError

    try:
        settings = load_settings(config) or default_config()
        run_demo(settings, Console())
    except ConfigError as exc:  # e.g. the bundled model's package is not installed
        fail(exc)


@app.command()
def serve(
    config: ConfigOption = None,
    socket_path: SocketOption = None,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="Log JSON lines.")] = False,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Also serve the OpenAI-compatible HTTP API here (needs the http extra).",
        ),
    ] = None,
) -> None:
    """Run the supervisor, serving it on a Unix socket (and over HTTP with --http).

    Runs until SIGTERM or Ctrl-C. SIGHUP reloads the config file, restarting only
    roles whose settings changed. Without --config: embed + chat on the bundled
    gemma 3 270M. While the models load, stderr shows each role's progress (a bar on a
    terminal, plain lines otherwise; none with JSON logs).
    """
    from lilbee_workers.cli.output import error_text
    from lilbee_workers.cli.progress import view_for
    from lilbee_workers.config import default_config
    from lilbee_workers.errors import ConfigError
    from lilbee_workers.hub.autopull import pull_missing
    from lilbee_workers.logs import configure_logging
    from lilbee_workers.service.daemon import Daemon

    try:
        settings = load_settings(config) or default_config()
        if http is not None:
            import msgspec

            if importlib.util.find_spec("uvicorn") is None:
                say_error("--http needs the http extra: pip install 'lilbee-workers[http]'")
                raise typer.Exit(EXIT_ERROR)

            settings = msgspec.structs.replace(settings, http_listen=http).validate()
        log_format = "json" if json_logs else settings.log_format
        configure_logging(settings.log_level, log_format)
        pull_missing(settings)  # auto_pull: fetch missing hf: models (logged), else nothing
        # JSON logs are for machines: no progress lines among them.
        progress = None if log_format == "json" else view_for(sys.stderr, ends=True)
        code = Daemon(
            settings,
            config_path=config,
            socket_path=socket_path,
            progress=progress,
            http_listen=http,
        ).run()
    except ConfigError as exc:
        say_error(error_text(exc))
        raise typer.Exit(EXIT_ERROR) from None
    except RuntimeError as exc:  # DaemonSetupError: the socket cannot be set up safely
        say_error(str(exc))
        raise typer.Exit(EXIT_ERROR) from None
    raise typer.Exit(code)


@app.command()
def status(
    socket_path: SocketOption = None, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Show each role's state, pid, uptime, restarts, load, latency.

    Also the model, the last exit reason and memory. Exit code 0 when every role is
    ready, 3 when some role is not, 69 when the daemon cannot be reached, 1 on any
    other error (2: a usage error).
    """
    from lilbee_workers.cli.output import status_table, statuses_json

    with daemon(socket_path, config, as_json) as client:
        statuses = client.status()
    if as_json:
        print(statuses_json(statuses))
    else:
        Console().print(status_table(statuses))
    if any(s.state not in SERVING for s in statuses):
        raise typer.Exit(EXIT_NOT_READY)


@app.command()
def models(
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    local: Annotated[bool, typer.Option("--local", help="List the pulled models instead.")] = False,
) -> None:
    """List each role's model names: the default first, the loaded one marked.

    With --local: the models `pull` put in the local cache (no daemon needed)."""
    from lilbee_workers.cli.output import model_lines, statuses_json

    if local:
        return pull_commands.models_local(as_json)
    with daemon(socket_path, config, as_json) as client:
        statuses = client.status()
    print(statuses_json(statuses) if as_json else "\n".join(model_lines(statuses)))


@app.command()
def load(
    role: Annotated[str, typer.Argument(help="A configured role (embed, chat, ...).")],
    model: Annotated[str, typer.Argument(help="One of the role's model names (see `models`).")],
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make MODEL the role's default and load it now (after the call in flight).

    If it cannot load, the model that served before serves on and the exit code is 1.
    """
    from lilbee_workers.cli.output import model_lines, statuses_json

    with daemon(socket_path, config, as_json) as client:
        statuses = client.load(role, model)
    print(statuses_json(statuses) if as_json else "\n".join(model_lines(statuses)))


@app.command()
def unload(
    role: Annotated[str, typer.Argument(help="A configured role (embed, chat, ...).")],
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop the role's worker to free its memory; the next call loads the model again."""
    from lilbee_workers.cli.output import model_lines, statuses_json

    with daemon(socket_path, config, as_json) as client:
        statuses = client.unload(role)
    print(statuses_json(statuses) if as_json else "\n".join(model_lines(statuses)))


@app.command()
def restart(
    role: Annotated[str, typer.Argument(help="A configured role (embed, chat, ...) or all.")],
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the roles are back.")
    ] = True,
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Gracefully restart a role, or all; clears a failed state.

    Drains the role's calls, stops its worker and starts a fresh one. With --wait
    (default): shows each role's load on stderr (a bar on a terminal, plain lines
    otherwise), then prints its new pid, or why it did not come back, and exits 3 if
    some role is not ready. With --no-wait: prints that the restart was requested
    (`status` shows progress); --json then shows the states from before it.
    """
    from lilbee_workers.cli.output import restart_lines, statuses_json
    from lilbee_workers.cli.progress import restart_watching, view_for

    with daemon(socket_path, config, as_json) as client:
        if wait and not as_json:
            statuses = restart_watching(client, role, view_for(sys.stderr, ends=False))
        else:
            statuses = client.restart(role, wait=wait)
    if as_json:
        print(statuses_json(statuses, waited=wait))
    else:
        print("\n".join(restart_lines(statuses, waited=wait)))
    if wait and any(s.state not in SERVING for s in statuses):
        raise typer.Exit(EXIT_NOT_READY)


@app.command()
def doctor(
    config: ConfigOption = None, socket_path: SocketOption = None, as_json: JsonOption = False
) -> None:
    """Check config, models, directories and daemon; say what to fix.

    Checks the config, each model file (a GGUF of the right kind for its role), the
    log and socket directories, and the daemon. Exit 0 when nothing is wrong (warnings
    allowed), 1 when a problem is found.

    Without --config: the default config (embed + chat on the bundled gemma 3 270M).
    """
    from lilbee_workers.cli.doctor import check_config
    from lilbee_workers.cli.output import doctor_json, doctor_text

    findings = check_config(config, socket_path)
    print(doctor_json(findings) if as_json else doctor_text(findings))
    if any(f.level == "error" for f in findings):
        raise typer.Exit(EXIT_ERROR)


SERVING = ("ready", "busy", "degraded", "unloaded")
"""States of a role that takes calls (an unloaded one loads its model on the next)."""

for command in (*role_commands.COMMANDS, *pull_commands.COMMANDS):
    app.command()(command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
