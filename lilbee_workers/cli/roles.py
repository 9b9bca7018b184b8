"""The one-shot role commands (embed, chat, complete, rerank, vision): one call
through the daemon, printed for a person or, with ``--json``, for a script. ``cli``
registers them after its own commands, so ``--help`` lists serve and status first."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from lilbee_workers.cli.common import ConfigOption, JsonOption, ModelOption, SocketOption, daemon


def embed(
    texts: Annotated[list[str], typer.Argument(help="Texts to embed.")],
    truncate: Annotated[
        bool, typer.Option("--truncate", help="Cut texts longer than the context.")
    ] = False,
    model: ModelOption = None,
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Embed texts through the daemon.

    Prints each vector's size and first values (--json: all of them).
    """
    with daemon(socket_path, config, as_json) as client:
        vectors = client.embed(texts, truncate=truncate, model=model)
    if as_json:
        print(json.dumps({"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}))
        return
    for text, vector in zip(texts, vectors, strict=True):
        head = ", ".join(f"{v:.4f}" for v in vector[:4])
        print(f"{text[:40]!r}: dim {vector.shape[0]} [{head}, ...]")


def chat(
    prompt: Annotated[str, typer.Argument(help="What to say to the chat model.")],
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.8,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    model: ModelOption = None,
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Chat through the daemon; the reply streams to the terminal.

    --json prints {text, finish_reason, prompt_tokens, completion_tokens} at the end.
    """
    from lilbee_workers.cli.output import print_stream

    with daemon(socket_path, config, as_json) as client:
        stream = client.chat(
            prompt, max_tokens=max_tokens, temperature=temperature, seed=seed, model=model
        )
        print_stream(stream, as_json)


def complete(
    prompt: Annotated[str, typer.Argument(help="Text for the model to continue.")],
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.8,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop at this text (repeatable).")] = None,
    model: ModelOption = None,
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Continue a raw prompt through the daemon (chat role, no chat template).

    What base models are for: `chat` wraps messages in a template such models were
    never trained on. --json prints {text, finish_reason, prompt_tokens,
    completion_tokens} at the end.
    """
    from lilbee_workers.cli.output import print_stream

    with daemon(socket_path, config, as_json) as client:
        stream = client.complete(
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            stop=stop or (),
            model=model,
        )
        print_stream(stream, as_json)


def rerank(
    query: Annotated[str, typer.Argument(help="The query.")],
    documents: Annotated[list[str], typer.Argument(help="Documents to score.")],
    top_n: Annotated[int | None, typer.Option(help="Keep the best N.")] = None,
    truncate: Annotated[
        bool, typer.Option("--truncate", help="Cut pairs longer than the context.")
    ] = False,
    model: ModelOption = None,
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Score documents against a query through the daemon, best first."""
    import msgspec

    with daemon(socket_path, config, as_json) as client:
        items = client.rerank(query, documents, top_n=top_n, truncate=truncate, model=model)
    if as_json:
        print(json.dumps(msgspec.to_builtins(items)))
        return
    for item in items:
        print(f"{item.score:10.4f}  [{item.index}] {documents[item.index]}")


def vision(
    image: Annotated[Path, typer.Argument(help="A PNG or JPEG file.", exists=True)],
    prompt: Annotated[str | None, typer.Argument(help="What to ask about it.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    model: ModelOption = None,
    socket_path: SocketOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Describe an image through the daemon (the reply streams).

    --json prints {text, finish_reason, prompt_tokens, completion_tokens} at the end.
    """
    from lilbee_workers.cli.output import print_stream

    with daemon(socket_path, config, as_json) as client:
        stream = client.vision(image.read_bytes(), prompt, max_tokens=max_tokens, model=model)
        print_stream(stream, as_json)


COMMANDS: list[Callable[..., None]] = [embed, chat, complete, rerank, vision]
