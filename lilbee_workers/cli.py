"""The ``lilbee-workers`` command line (typer). Client commands find the socket as
``config.socket_path_for`` says; errors go to stderr as plain lines, or with ``--json``
to stdout as ``{"error": {"kind": ..., "message": ...}}``, with the same exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

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
EXIT_UNREACHABLE = 2
EXIT_NOT_READY = 3


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
    from lilbee_workers.config import default_config
    from lilbee_workers.demo import run_demo
    from lilbee_workers.errors import ConfigError

    try:
        settings = _settings(config) or default_config()
    except ConfigError as exc:
        _fail(exc)
    run_demo(settings, Console())


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
        "(default: $XDG_RUNTIME_DIR/lilbee-workers.sock).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def _settings(config: Path | None) -> SupervisorConfig | None:
    """The config file's settings, None without one; ``ConfigError`` if invalid."""
    from lilbee_workers.config import load_config

    return load_config(config) if config else None


def _say_error(text: str) -> None:
    """One plain line (or several) on stderr: no markup, no wrapping inside paths."""
    typer.echo(f"error: {text}", err=True)


def _client(socket_path: Path | None, config: Path | None = None) -> Client:
    """A client on the socket that ``socket_path_for`` picks."""
    from lilbee_workers.config import socket_path_for

    settings = _settings(config)
    return _connect(socket_path_for(socket_path, settings, config)[0], settings)


def _connect(path: Path, settings: SupervisorConfig | None) -> Client:
    from lilbee_workers.client import Client
    from lilbee_workers.transport.codec import DEFAULT_MAX_FRAME_BYTES

    frame_cap = settings.max_frame_bytes if settings else DEFAULT_MAX_FRAME_BYTES
    return Client(path, max_frame_bytes=frame_cap)


def _fail(error: Exception, as_json: bool = False, socket_source: str = "") -> NoReturn:
    from lilbee_workers.errors import DaemonUnreachable
    from lilbee_workers.output import error_json, error_text

    if as_json:
        print(error_json(error, socket_source))
    else:
        _say_error(error_text(error, socket_source))
    raise typer.Exit(EXIT_UNREACHABLE if isinstance(error, DaemonUnreachable) else EXIT_ERROR)


@contextmanager
def _daemon(socket_path: Path | None, config: Path | None, as_json: bool) -> Iterator[Client]:
    """A client of the daemon; a ``WorkerError`` or ``ConfigError`` in the block is
    printed (as JSON with ``--json``) and exits with its code."""
    from lilbee_workers.config import socket_path_for
    from lilbee_workers.errors import ConfigError, WorkerError

    source = ""
    try:
        settings = _settings(config)
        path, source = socket_path_for(socket_path, settings, config)
        with _connect(path, settings) as client:
            yield client
    except (WorkerError, ConfigError) as exc:
        _fail(exc, as_json, source)


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
    gemma 3 270M.
    """
    from lilbee_workers.config import default_config
    from lilbee_workers.daemon import Daemon
    from lilbee_workers.errors import ConfigError
    from lilbee_workers.logs import configure_logging

    try:
        settings = _settings(config) or default_config()
        if http is not None:
            import msgspec

            settings = msgspec.structs.replace(settings, http_listen=http).validate()
        configure_logging(settings.log_level, "json" if json_logs else settings.log_format)
        code = Daemon(settings, config_path=config, socket_path=socket_path).run()
    except ConfigError as exc:
        _say_error(f"invalid config: {exc}")
        raise typer.Exit(EXIT_ERROR) from None
    except RuntimeError as exc:  # DaemonSetupError: the socket cannot be set up safely
        _say_error(str(exc))
        raise typer.Exit(EXIT_ERROR) from None
    raise typer.Exit(code)


@app.command()
def status(
    socket_path: SocketOption = None, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Show each role's state, pid, uptime, restarts, load, latency.

    Also the model, the last exit reason and memory. Exit code 0 when every role is
    ready, 3 when some role is not, 2 when the daemon cannot be reached, 1 on any other
    error.
    """
    from lilbee_workers.output import status_table, statuses_json

    with _daemon(socket_path, config, as_json) as client:
        statuses = client.status()
    if as_json:
        print(statuses_json(statuses))
    else:
        Console().print(status_table(statuses))
    if any(s.state not in ("ready", "busy") for s in statuses):
        raise typer.Exit(EXIT_NOT_READY)


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
    (default): prints each role's new pid, or why it did not come back, and exits 3 if
    some role is not ready. With --no-wait: prints that the restart was requested
    (`status` shows progress); --json then shows the states from before it.
    """
    from lilbee_workers.output import restart_lines, statuses_json

    with _daemon(socket_path, config, as_json) as client:
        statuses = client.restart(role, wait=wait)
    if as_json:
        print(statuses_json(statuses, waited=wait))
    else:
        print("\n".join(restart_lines(statuses, waited=wait)))
    if wait and any(s.state not in ("ready", "busy") for s in statuses):
        raise typer.Exit(EXIT_NOT_READY)


@app.command()
def embed(
    texts: Annotated[list[str], typer.Argument(help="Texts to embed.")],
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Embed texts through the daemon.

    Prints each vector's size and first values (--json: all of them).
    """
    with _daemon(socket_path, config, as_json) as client:
        vectors = client.embed(texts)
    if as_json:
        print(json.dumps({"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}))
        return
    for text, vector in zip(texts, vectors, strict=True):
        head = ", ".join(f"{v:.4f}" for v in vector[:4])
        print(f"{text[:40]!r}: dim {vector.shape[0]} [{head}, ...]")


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="What to say to the chat model.")],
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.8,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Chat through the daemon; the reply streams to the terminal.

    --json prints {text, finish_reason, prompt_tokens, completion_tokens} at the end.
    """
    from lilbee_workers.output import print_stream

    with _daemon(socket_path, config, as_json) as client:
        stream = client.chat(prompt, max_tokens=max_tokens, temperature=temperature, seed=seed)
        print_stream(stream, as_json)


@app.command()
def complete(
    prompt: Annotated[str, typer.Argument(help="Text for the model to continue.")],
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.8,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop at this text (repeatable).")] = None,
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Continue a raw prompt through the daemon (chat role, no chat template).

    What base models are for: `chat` wraps messages in a template such models were
    never trained on. --json prints {text, finish_reason, prompt_tokens,
    completion_tokens} at the end.
    """
    from lilbee_workers.output import print_stream

    with _daemon(socket_path, config, as_json) as client:
        stream = client.complete(
            prompt, max_tokens=max_tokens, temperature=temperature, seed=seed, stop=stop or ()
        )
        print_stream(stream, as_json)


@app.command()
def rerank(
    query: Annotated[str, typer.Argument(help="The query.")],
    documents: Annotated[list[str], typer.Argument(help="Documents to score.")],
    top_n: Annotated[int | None, typer.Option(help="Keep the best N.")] = None,
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Score documents against a query through the daemon, best first."""
    import msgspec

    with _daemon(socket_path, config, as_json) as client:
        items = client.rerank(query, documents, top_n=top_n)
    if as_json:
        print(json.dumps(msgspec.to_builtins(items)))
        return
    for item in items:
        print(f"{item.score:10.4f}  [{item.index}] {documents[item.index]}")


@app.command()
def vision(
    image: Annotated[Path, typer.Argument(help="A PNG or JPEG file.", exists=True)],
    prompt: Annotated[str | None, typer.Argument(help="What to ask about it.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Describe an image through the daemon (the reply streams).

    --json prints {text, finish_reason, prompt_tokens, completion_tokens} at the end.
    """
    from lilbee_workers.output import print_stream

    with _daemon(socket_path, config, as_json) as client:
        stream = client.vision(image.read_bytes(), prompt, max_tokens=max_tokens)
        print_stream(stream, as_json)


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
    from lilbee_workers.doctor import check_config, report_json, report_text

    findings = check_config(config, socket_path)
    print(report_json(findings) if as_json else report_text(findings))
    if any(f.level == "error" for f in findings):
        raise typer.Exit(EXIT_ERROR)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
