"""Which files of a repo a ``QUANT`` means, the way ``llama-server -hf`` picks: the GGUF
whose name carries that quantization (case-insensitive), Q4_K_M when none is named, else
the repo's only GGUF; every shard of a split model; a vision repo's ``mmproj`` too."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from lilbee_workers.hub.names import HubError

DEFAULT_QUANT = "Q4_K_M"
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})$", re.IGNORECASE)
_LABEL = re.compile(
    r"(?:^|[-._])((?:I?Q\d+(?:_[A-Z0-9]+)*)|B?F16|FP16|F32|FP32|TQ\d_\d|MXFP4(?:_MOE)?)(?=$|[-._])",
    re.IGNORECASE,
)
_PROJECTOR_PREFERENCE = ("F16", "BF16", "F32", "Q8_0")


@dataclass(frozen=True)
class Choice:
    """What to fetch for one model: its files (shards in order) and a projector."""

    quant: str
    files: tuple[str, ...]
    mmproj: str | None = None

    @property
    def model_file(self) -> str:
        """The file llama.cpp is given (the first shard: it finds the rest itself)."""
        return self.files[0]

    @property
    def all_files(self) -> tuple[str, ...]:
        return self.files + ((self.mmproj,) if self.mmproj else ())


def _stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return _SPLIT.sub("", name[: -len(".gguf")] if name.lower().endswith(".gguf") else name)


def split_count(path: str) -> int:
    """How many parts a split model's file says it has (``-00001-of-00003``: 3); 0 when
    the file is whole."""
    name = path.rsplit("/", 1)[-1]
    found = _SPLIT.search(name[: -len(".gguf")] if name.lower().endswith(".gguf") else name)
    return int(found[2]) if found else 0


def label(path: str) -> str:
    """The quantization a file's name carries (upper case), ``""`` when none."""
    found = _LABEL.findall(_stem(path))
    return found[-1].upper() if found else ""


def is_projector(path: str) -> bool:
    return "mmproj" in path.rsplit("/", 1)[-1].lower()


def groups(files: Iterable[str]) -> dict[str, list[str]]:
    """The repo's models (projectors aside): one entry per file or split set, keyed by
    its path without the shard suffix, with the shards in order."""
    found: dict[str, list[str]] = {}
    for path in sorted(f for f in files if f.lower().endswith(".gguf") and not is_projector(f)):
        base = _SPLIT.sub("", path[: -len(".gguf")])
        found.setdefault(base, []).append(path)
    return found


def available(files: Iterable[str]) -> list[str]:
    """The quantizations a repo (or a cached copy of it) offers, sorted."""
    return sorted({label(shards[0]) or shards[0] for shards in groups(files).values()})


def choose(repo: str, quant: str, files: Iterable[str]) -> Choice:
    """The files ``repo:quant`` means among ``files``; ``HubError`` naming what there is."""
    files = list(files)
    models = groups(files)
    if not models:
        raise HubError("no-gguf", f"{repo} has no GGUF files (is it a GGUF repo? they are "
                                  "usually named ...-GGUF)")  # fmt: skip
    wanted = (quant or DEFAULT_QUANT).upper()
    matches = [shards for shards in models.values() if label(shards[0]) == wanted]
    if not matches and not quant and len(models) == 1:
        matches = list(models.values())
    if len(matches) != 1:
        offered = ", ".join(available(files))
        if not matches:
            what = f"no {wanted} file" if quant else f"no {wanted} file and more than one GGUF"
            raise HubError("quant-not-found", f"{repo} has {what}; it has: {offered} "
                                              f"(pull {repo}:QUANT)")  # fmt: skip
        names = ", ".join(shards[0] for shards in matches)
        raise HubError("quant-ambiguous", f"{repo}: several files are {wanted}: {names}")
    shards = matches[0]
    chosen = label(shards[0]) or wanted
    return Choice(chosen, tuple(shards), projector_for(files, chosen))


def projector_for(files: list[str], quant: str) -> str | None:
    """The repo's mmproj file: the one of the model's quantization, else F16 (the usual
    one), else BF16, F32, Q8_0, else the first."""
    projectors = sorted(f for f in files if f.lower().endswith(".gguf") and is_projector(f))
    if not projectors:
        return None
    by_label = {label(p): p for p in reversed(projectors)}
    for wanted in (quant, *_PROJECTOR_PREFERENCE):
        if wanted in by_label:
            return by_label[wanted]
    return projectors[0]
