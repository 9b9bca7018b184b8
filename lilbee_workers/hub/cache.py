"""The local model cache (huggingface_hub's layout, under ``HF_HOME``): where a pulled
model is, offline. ``serve`` resolves ``hf:`` names here and never downloads."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lilbee_workers.errors import ConfigError
from lilbee_workers.hub.names import HubError, ModelRef, parse
from lilbee_workers.hub.quants import Choice, choose, groups, label, projector_for, split_count


def cache_dir() -> Path:
    """huggingface_hub's cache, read from the environment at each call (as the library
    reads it at import): ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expanduser(home)) / "hub"


def repo_dir(repo: str) -> Path:
    """The repo's folder in the cache (``models--ORG--REPO``), checked to be inside it."""
    root = cache_dir()
    folder = root / ("models--" + repo.replace("/", "--"))
    if not folder.resolve().is_relative_to(root.resolve()):
        raise HubError("bad-name", f"{repo!r} would leave the cache")
    return folder


def snapshot(repo: str) -> Path | None:
    """The cached snapshot of the repo's ``main`` (what ``pull`` fetched last), if any."""
    folder = repo_dir(repo)
    try:
        commit = (folder / "refs" / "main").read_text().strip()
    except OSError:
        return None
    path = folder / "snapshots" / commit
    return path if commit and "/" not in commit and path.is_dir() else None


def cached_files(repo: str) -> tuple[Path | None, list[str]]:
    """The snapshot folder and the GGUF files in it (relative, ``/``-separated)."""
    where = snapshot(repo)
    if where is None:
        return None, []
    found = [
        p.relative_to(where).as_posix()
        for p in where.rglob("*")
        if p.name.lower().endswith(".gguf") and p.is_file()
    ]
    return where, sorted(found)


def local_choice(ref: ModelRef) -> tuple[Path, Choice]:
    """The cached files ``ref`` means, all present; ``HubError`` when they are not."""
    where, files = cached_files(ref.repo)
    if where is None:
        raise HubError("not-cached", f"{ref.repo} is not in the local model cache")
    choice = choose(ref.repo, ref.quant, files)
    shards = split_count(choice.model_file)
    if shards and len(choice.files) != shards:  # a split model is served whole or not at all
        raise HubError("not-cached", f"{ref} has {len(choice.files)} of its {shards} parts "
                       "in the local model cache")  # fmt: skip
    return where, choice


def resolve(name: str, projector: bool = False) -> str:
    """The local path of ``hf:ORG/REPO[:QUANT]`` (its projector with ``projector``),
    offline; ``ConfigError`` with the command that fetches it when it is not cached."""
    try:
        ref = parse(name)
        where, choice = local_choice(ref)
    except HubError as exc:
        if exc.kind == "bad-name":
            raise ConfigError(f"{name}: {exc.message}") from None
        raise ConfigError(f"{name}: {exc.message} ({cache_dir()}); "
                          f"run: lilbee-workers pull {ref}") from None  # fmt: skip
    if projector:
        if choice.mmproj is None:
            raise ConfigError(f"{name}: no mmproj file of {ref.repo} in the local cache; "
                              f"run: lilbee-workers pull {ref}")  # fmt: skip
        return str(where / choice.mmproj)
    return str(where / choice.model_file)


def resolve_path(value: str, projector: bool = False) -> str:
    """A config's model (or mmproj) value as a file path: ``hf:`` names from the cache,
    anything else a path (``~`` expanded)."""
    if value.startswith("hf:"):
        return resolve(value, projector)
    return os.path.expanduser(value)


@dataclass
class CachedModel:
    """One quantization of a repo in the cache."""

    repo: str
    quant: str
    files: list[Path]
    mmproj: Path | None

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def cached_models() -> list[CachedModel]:
    """Every model in the cache, one per repo and quantization."""
    models = []
    root = cache_dir()
    folders = sorted(root.glob("models--*--*")) if root.is_dir() else []
    for folder in folders:
        repo = folder.name.removeprefix("models--").replace("--", "/", 1)
        where, files = cached_files(repo)
        if where is None:
            continue
        for shards in groups(files).values():
            chosen = label(shards[0])
            mmproj = projector_for(files, chosen)
            models.append(CachedModel(repo, chosen or "-", [where / f for f in shards],
                                      where / mmproj if mmproj else None))  # fmt: skip
    return models


def remove(name: str) -> list[str]:
    """Remove ``ORG/REPO`` (all of it) or ``ORG/REPO:QUANT`` (that model's files) from
    the cache; the paths removed. ``HubError`` when there is nothing to remove."""
    ref = parse(name)
    folder = repo_dir(ref.repo)
    if not ref.quant:
        if not folder.is_dir():
            raise HubError("not-cached", f"{ref.repo} is not in the local model cache")
        shutil.rmtree(folder)
        return [str(folder)]
    where, choice = local_choice(ref)
    others = [m for m in cached_models() if m.repo == ref.repo and m.quant != choice.quant]
    doomed = list(choice.files) + ([choice.mmproj] if choice.mmproj and not others else [])
    from lilbee_workers.hub.verify import remove_cached

    for relative in doomed:
        remove_cached(str(where / relative))
    return [str(where / relative) for relative in doomed]
