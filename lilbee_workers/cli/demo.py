"""The demo: embed a few texts and stream a completion in-process, then show status."""

from __future__ import annotations

import sys

from rich.console import Console

from lilbee_workers.cli.output import status_table
from lilbee_workers.config import SupervisorConfig
from lilbee_workers.supervisor import Supervisor


def run_demo(settings: SupervisorConfig, out: Console) -> None:
    """What ``lilbee-workers demo`` shows: similar texts embed close together, and a base
    model continues a prompt sensibly."""
    with Supervisor(settings) as sup:
        texts = ["Bees make honey.", "Honey is sweet.", "Rust is a systems language."]
        vectors = sup.embed(texts)
        out.print(f"[bold]embed[/]: {len(texts)} texts -> vectors of shape {vectors.shape}")
        similarity = vectors @ vectors.T
        out.print(
            f"  cosine(bees, honey) = {similarity[0, 1]:.3f}, "
            f"cosine(bees, rust) = {similarity[0, 2]:.3f}"
        )
        # The bundled gemma 3 270M is a base model: it continues text well and babbles
        # through a chat template, so the demo completes a prompt (``complete``).
        prompt = "Honey is made by"
        out.print(f"[bold]complete[/]: {prompt}", end="", highlight=False)
        stream = sup.complete(prompt, max_tokens=24, temperature=0.0, stop=["\n"])
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
