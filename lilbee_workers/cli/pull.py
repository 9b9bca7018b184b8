"""``pull`` and ``rm``, and ``models --local``: models by name from a Hugging Face-style
hub into the local cache (``HF_HOME``), which ``hf:ORG/REPO[:QUANT]`` in a config serves
from, offline. ``cli`` registers these commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from lilbee_workers.cli.common import EXIT_ERROR, JsonOption, say_error

if TYPE_CHECKING:
    from lilbee_workers.hub.cache import CachedModel
    from lilbee_workers.hub.names import HubError

NameArgument = Annotated[
    str,
    typer.Argument(
        help="ORG/REPO or ORG/REPO:QUANT (e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M)."
    ),
]


def _fail(error: HubError, as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps({"error": {"kind": error.kind, "message": error.message}}))
    else:
        say_error(error.message)
    raise typer.Exit(EXIT_ERROR)


def pull(name: NameArgument, as_json: JsonOption = False) -> None:
    """Download a GGUF model from the hub into the local cache, and verify it.

    QUANT picks the file as llama-server -hf does (case-insensitive; default Q4_K_M,
    else the repo's only GGUF); a split model comes whole, a vision repo's mmproj with
    it. Each file is checked against the hub's sha256 and must be a GGUF, or it is
    removed again. The hub is HF_ENDPOINT (default huggingface.co), the cache HF_HOME,
    the token HF_TOKEN or `hf auth login`. --json: one line per file.
    """
    from lilbee_workers.hub.download import pull as fetch
    from lilbee_workers.hub.names import HubError, parse
    from lilbee_workers.hub.report import BarReport, JsonReport, LineReport

    try:
        ref = parse(name)
        if as_json:
            report: JsonReport | BarReport | LineReport = JsonReport()
        elif sys.stderr.isatty():
            report = BarReport()
        else:
            report = LineReport(lambda text: print(text, file=sys.stderr, flush=True))
        with report:
            choice, _ = fetch(ref, report)
    except HubError as exc:
        _fail(exc, as_json)
    spec = f"hf:{ref.repo}:{choice.quant}"
    if not as_json:
        print(f"pulled {ref.repo}:{choice.quant}; in a config: model = \"{spec}\""
              + (f", mmproj = \"{spec}\"" if choice.mmproj else ""))  # fmt: skip


def rm(name: NameArgument, as_json: JsonOption = False) -> None:
    """Remove a model from the local cache: ORG/REPO:QUANT that model, ORG/REPO all."""
    from lilbee_workers.hub.cache import remove
    from lilbee_workers.hub.names import HubError

    try:
        removed = remove(name)
    except HubError as exc:
        _fail(exc, as_json)
    print(
        json.dumps({"removed": removed}) if as_json else "\n".join(f"removed {p}" for p in removed)
    )


def models_local(as_json: bool) -> None:
    """``models --local``: the cache's models with size, architecture and the roles
    each could serve (judged as ``doctor`` judges a role's model)."""
    from rich.console import Console
    from rich.table import Table

    from lilbee_workers.hub.cache import cache_dir, cached_models

    rows = [_describe(model) for model in cached_models()]
    if as_json:
        print(json.dumps({"cache": str(cache_dir()), "models": rows}, indent=2))
        return
    if not rows:
        print(f"no models in {cache_dir()}; fetch one: lilbee-workers pull ORG/REPO[:QUANT]")
        return
    table = Table(title=f"models in {cache_dir()}")
    for column in ("model", "size", "arch", "roles"):
        table.add_column(column)
    for row in rows:
        size = f"{int(str(row['size'])) / 2**20:.1f} MiB"
        roles = ", ".join(str(role) for role in row["roles"])  # type: ignore[attr-defined]
        table.add_row(f"hf:{row['name']}", size, str(row["arch"]), roles)
    Console().print(table)


def _describe(model: CachedModel) -> dict[str, object]:
    from lilbee_workers.cli.doctor import check_role
    from lilbee_workers.config import ROLE_KINDS, RoleConfig
    from lilbee_workers.gguf_info import GGUFError, read_metadata

    path = str(model.files[0])
    try:
        arch = read_metadata(path).architecture
    except (GGUFError, OSError):
        arch = "?"
    mmproj = str(model.mmproj) if model.mmproj else None
    # A role could use it when doctor finds nothing to say (n_ctx 1: judge the model,
    # not a context size the config has yet to choose).
    judged = RoleConfig(model=path, mmproj=mmproj, n_ctx=1)
    roles = [r for r in ROLE_KINDS if all(f.level == "ok" for f in check_role(r, judged))]
    return {"name": f"{model.repo}:{model.quant}", "repo": model.repo, "quant": model.quant,
            "size": model.size, "arch": arch, "path": path, "mmproj": mmproj,
            "roles": roles}  # fmt: skip


COMMANDS: list[Callable[..., None]] = [pull, rm]
