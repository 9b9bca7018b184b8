"""A role's models by name: which names requests may use, which is the default, and the
single-model config a worker for one of them boots with.

A role configured with one ``model`` path serves it under the file's name without
``.gguf``; ``[roles.<role>.models.<name>]`` tables add more. Names come only from the
config: nothing a client sends is ever used as a path.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from lilbee_workers.config import ModelEntry, RoleConfig

DEFAULT_WORD = "default"
"""What a config writes for the bundled model (``model = "default"``); a request may use
it too, for the role's default model (unless a model of the role has that name)."""


def name_of_path(path: str) -> str:
    """A model file's name: its base name without ``.gguf``."""
    name = Path(path).name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


def entries(config: RoleConfig) -> dict[str, ModelEntry]:
    """Every model the role serves, by name (the default first)."""
    named = dict(config.models)
    if config.model in named:  # the default first
        return {config.model: named[config.model], **named}
    if config.model:
        path = config.model
        if path == DEFAULT_WORD:
            from lilbee_workers.models import default_model_path

            path = default_model_path()
        named = {name_of_path(path): ModelEntry(path=config.model), **named}
    return named


def default_name(config: RoleConfig) -> str:
    """The model a request that names none gets."""
    return next(iter(entries(config)))


def names(config: RoleConfig) -> list[str]:
    return list(entries(config))


def config_for(config: RoleConfig, name: str) -> RoleConfig:
    """The config a worker serving model ``name`` boots with: the role's settings with
    the model's path and overrides, and no model list. ``KeyError`` for an unknown name."""
    entry = entries(config)[name]
    return msgspec.structs.replace(
        config,
        model=entry.path,
        models={},
        n_ctx=entry.n_ctx if entry.n_ctx is not None else config.n_ctx,
        mmproj=entry.mmproj if entry.mmproj is not None else config.mmproj,
        chat_format=entry.chat_format if entry.chat_format is not None else config.chat_format,
    )
