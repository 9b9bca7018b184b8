"""The ``lilbee-workers`` command line (typer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from lilbee_workers.types import RoleStatus

if TYPE_CHECKING:
    from lilbee_workers.api import ChatStream
    from lilbee_workers.client import Client

app = typer.Typer(
    help="Supervise local llama.cpp model workers: one subprocess per role "
    "(embed, chat, rerank, vision), restarted when they crash or hang.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNREACHABLE = 2
EXIT_NOT_READY = 3


@app.callback()
def _group() -> None:
    """Supervise local llama.cpp model workers."""


def status_table(statuses: list[RoleStatus]) -> Table:
    table = Table(
        title="lilbee-workers", box=None, pad_edge=False, padding=(0, 1, 0, 0), show_header=True
    )
    for column in ("role", "state", "pid", "model", "up", "restarts", "run+q", "ok/err"):
        if column == "model":  # the column that gives way on a narrow terminal
            table.add_column(column, no_wrap=True, overflow="ellipsis", min_width=6, max_width=12)
        else:
            table.add_column(column, no_wrap=True, min_width=len(column))
    table.add_column("p50/p99ms", no_wrap=True)
    table.add_column("RSS", no_wrap=True)
    exits = []
    for s in statuses:
        p50 = "-" if s.p50_ms is None else f"{s.p50_ms:.0f}"
        p99 = "-" if s.p99_ms is None else f"{s.p99_ms:.0f}"
        table.add_row(
            s.role,
            s.state,
            str(s.pid or "-"),
            Path(s.model).stem,
            _duration(s.uptime_s),
            str(s.restarts),
            f"{s.in_flight}+{s.queued}",
            f"{s.served}/{s.errors}",
            f"{p50}/{p99}",
            _size(s.rss_bytes),
        )
        if s.last_exit:
            exits.append(f"{s.role}: {s.last_exit}")
    if exits:
        table.caption = "last exit - " + "; ".join(exits)
    return table


def _size(n_bytes: int) -> str:
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.1f}G"
    return f"{n_bytes / 2**20:.0f}M"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"


def statuses_json(statuses: list[RoleStatus]) -> str:
    return json.dumps({"roles": msgspec.to_builtins(statuses)}, indent=2)


@app.command()
def demo(
    config: Annotated[
        Path | None, typer.Option(help="TOML config; default: embed + chat on gemma 3 270M")
    ] = None,
) -> None:
    """Run a supervisor in this process: embed a few texts, stream a chat reply, show status."""
    from lilbee_workers.config import default_config, load_config
    from lilbee_workers.supervisor import Supervisor

    settings = load_config(config) if config else default_config()
    out = Console()
    with Supervisor(settings) as sup:
        texts = ["Bees make honey.", "Honey is sweet.", "Rust is a systems language."]
        vectors = sup.embed(texts)
        out.print(f"[bold]embed[/]: {len(texts)} texts -> vectors of shape {vectors.shape}")
        similarity = vectors @ vectors.T
        out.print(
            f"  cosine(bees, honey) = {similarity[0, 1]:.3f}, "
            f"cosine(bees, rust) = {similarity[0, 2]:.3f}"
        )
        out.print("[bold]chat[/]: ", end="")
        stream = sup.chat("Bees are", max_tokens=40, temperature=0.7, seed=42)
        for chunk in stream:
            out.print(chunk, end="", markup=False, highlight=False)
            sys.stdout.flush()
        result = stream.result
        assert result is not None
        out.print(
            f"\n  finish={result.finish_reason} prompt_tokens={result.prompt_tokens} "
            f"completion_tokens={result.completion_tokens}"
        )
        out.print(status_table(sup.status()))


SocketOption = Annotated[
    Path | None,
    typer.Option(
        "--socket",
        envvar="LILBEE_WORKERS_SOCKET",
        help="The daemon's Unix socket (default: $XDG_RUNTIME_DIR/lilbee-workers.sock).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def _client(socket_path: Path | None) -> Client:
    from lilbee_workers.client import Client

    return Client(socket_path)


def _fail(error: Exception) -> NoReturn:
    from lilbee_workers.errors import DaemonUnreachable

    err.print(f"[red]error:[/] {error}", markup=True, highlight=False)
    raise typer.Exit(EXIT_UNREACHABLE if isinstance(error, DaemonUnreachable) else EXIT_ERROR)


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="LILBEE_WORKERS_CONFIG", help="TOML config file."),
    ] = None,
    socket_path: SocketOption = None,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="Log JSON lines.")] = False,
) -> None:
    """Run the supervisor and serve it on a Unix socket (until SIGTERM or Ctrl-C).

    SIGHUP reloads the config file, restarting only roles whose settings changed.
    Without --config: embed + chat on the bundled gemma 3 270M.
    """
    from lilbee_workers.config import default_config, load_config
    from lilbee_workers.daemon import Daemon
    from lilbee_workers.errors import ConfigError
    from lilbee_workers.logs import configure_logging

    try:
        settings = load_config(config) if config else default_config()
    except ConfigError as exc:
        err.print(f"[red]invalid config:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    configure_logging(settings.log_level, "json" if json_logs else settings.log_format)
    try:
        code = Daemon(settings, config_path=config, socket_path=socket_path).run()
    except ConfigError as exc:
        err.print(f"[red]invalid config:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    except RuntimeError as exc:  # DaemonSetupError: the socket cannot be set up safely
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    raise typer.Exit(code)


@app.command()
def status(socket_path: SocketOption = None, as_json: JsonOption = False) -> None:
    """Show every role: state, pid, model, uptime, restarts, last exit, load, latency.

    Exit code 0 when every role is ready, 3 when some role is not, 2 when the daemon
    cannot be reached.
    """
    from lilbee_workers.errors import WorkerError

    try:
        statuses = _client(socket_path).status()
    except WorkerError as exc:
        _fail(exc)
    if as_json:
        print(statuses_json(statuses))
    else:
        Console().print(status_table(statuses))
    if any(s.state not in ("ready", "busy") for s in statuses):
        raise typer.Exit(EXIT_NOT_READY)


@app.command()
def restart(
    role: Annotated[str, typer.Argument(help="embed, chat, rerank, vision, or all")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until ready.")] = True,
    socket_path: SocketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Gracefully restart a role (drain its calls, stop, start); clears a failed state."""
    from lilbee_workers.errors import WorkerError

    try:
        statuses = _client(socket_path).restart(role, wait=wait)
    except WorkerError as exc:
        _fail(exc)
    if as_json:
        print(statuses_json(statuses))
    else:
        for s in statuses:
            print(f"{s.role}: {s.state} (pid {s.pid or '-'})")
    if wait and any(s.state != "ready" for s in statuses):
        raise typer.Exit(EXIT_NOT_READY)


@app.command()
def embed(
    texts: Annotated[list[str], typer.Argument(help="Texts to embed.")],
    socket_path: SocketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Embed texts through the daemon; prints each vector's size and first values."""
    from lilbee_workers.errors import WorkerError

    try:
        vectors = _client(socket_path).embed(texts)
    except WorkerError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}))
        return
    for text, vector in zip(texts, vectors, strict=True):
        head = ", ".join(f"{v:.4f}" for v in vector[:4])
        print(f"{text[:40]!r}: dim {vector.shape[0]} [{head}, ...]")


def _stream(stream: ChatStream, as_json: bool) -> None:
    from lilbee_workers.errors import WorkerError

    try:
        if as_json:
            result = stream.collect()
            print(json.dumps(msgspec.to_builtins(result)))
            return
        for chunk in stream:
            sys.stdout.write(chunk)
            sys.stdout.flush()
        print()
    except WorkerError as exc:
        _fail(exc)


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="What to say to the chat model.")],
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.8,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    socket_path: SocketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Chat through the daemon; the reply streams to the terminal."""
    from lilbee_workers.errors import WorkerError

    try:
        stream = _client(socket_path).chat(
            prompt, max_tokens=max_tokens, temperature=temperature, seed=seed
        )
    except WorkerError as exc:
        _fail(exc)
    _stream(stream, as_json)


@app.command()
def rerank(
    query: Annotated[str, typer.Argument(help="The query.")],
    documents: Annotated[list[str], typer.Argument(help="Documents to score.")],
    top_n: Annotated[int | None, typer.Option(help="Keep the best N.")] = None,
    socket_path: SocketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Score documents against a query through the daemon, best first."""
    from lilbee_workers.errors import WorkerError

    try:
        items = _client(socket_path).rerank(query, documents, top_n=top_n)
    except WorkerError as exc:
        _fail(exc)
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
    as_json: JsonOption = False,
) -> None:
    """Describe an image through the daemon; the reply streams to the terminal."""
    from lilbee_workers.errors import WorkerError

    try:
        stream = _client(socket_path).vision(image.read_bytes(), prompt, max_tokens=max_tokens)
    except WorkerError as exc:
        _fail(exc)
    _stream(stream, as_json)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
