"""The ``lilbee-workers`` command line (typer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from lilbee_workers.transport.frames import RoleStatus

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
    table = Table(title="lilbee-workers roles")
    for column in (
        "role",
        "state",
        "pid",
        "model",
        "uptime",
        "restarts",
        "last exit",
        "in-flight",
        "queued",
        "served",
        "errors",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
    ):
        table.add_column(column, overflow="fold")
    for s in statuses:
        table.add_row(
            s.role,
            s.state,
            str(s.pid or "-"),
            Path(s.model).name,
            f"{s.uptime_s:.0f}s",
            str(s.restarts),
            s.last_exit or "-",
            str(s.in_flight),
            str(s.queued),
            str(s.served),
            str(s.errors),
            "-" if s.p50_ms is None else f"{s.p50_ms:.1f}",
            "-" if s.p99_ms is None else f"{s.p99_ms:.1f}",
            f"{s.rss_bytes / 2**20:.0f}",
        )
    return table


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
