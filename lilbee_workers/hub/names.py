"""Model names (``ORG/REPO[:QUANT]``, ``hf:`` in a config) and the checks that keep
repo and file names from escaping the cache: a name from a config, a command line or a
hub's file listing is refused unless it is plainly a repo id or a relative ``.gguf``."""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "hf:"
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO = re.compile(rf"{_PART}/{_PART}")
_QUANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,31}")
_FILE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}")


class HubError(Exception):
    """A pull, a lookup or a removal that cannot be done; ``kind`` names which failure
    (``--json`` prints it), the message says what to do."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ModelRef:
    """A model by name: a hub repo and, optionally, which quantization of it."""

    repo: str
    quant: str = ""

    def __str__(self) -> str:
        return f"{self.repo}:{self.quant}" if self.quant else self.repo


def is_hub_name(model: str) -> bool:
    """True for a config value that names a hub model (``hf:...``), not a path."""
    return model.startswith(PREFIX)


def parse(name: str) -> ModelRef:
    """``ORG/REPO[:QUANT]`` (an ``hf:`` prefix allowed); ``HubError`` for anything that is
    not plainly one (no ``..``, no absolute path, no URL, no third path part)."""
    text = name.removeprefix(PREFIX).strip()
    repo, _, quant = text.partition(":")
    if not _REPO.fullmatch(repo) or ".." in repo or "--" in repo:
        raise HubError(
            "bad-name",
            f"{name!r} is not a model name: ORG/REPO or ORG/REPO:QUANT, e.g. "
            "Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M (letters, digits, '.', '_', '-')",
        )
    if quant and not _QUANT.fullmatch(quant):
        raise HubError("bad-name", f"{quant!r} is not a quantization name (e.g. Q4_K_M, Q8_0)")
    return ModelRef(repo, quant)


def check_file_name(path: str) -> str:
    """A file name from the hub's listing, checked before it becomes a path in the
    cache: relative, no ``..`` or empty parts, no backslash, ending in ``.gguf``."""
    parts = path.split("/")
    if (
        not path.lower().endswith(".gguf")
        or len(parts) > 4
        or not all(_FILE_PART.fullmatch(part) and ".." not in part for part in parts)
    ):
        raise HubError("bad-name", f"refusing the hub's file name {path!r} (not a plain .gguf)")
    return path
