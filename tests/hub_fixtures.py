"""Fixtures for the hub tests: a stand-in hub on 127.0.0.1 with tiny generated GGUFs,
and the environment that points huggingface_hub (and ``hf:`` names) at it and at a
private cache."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_standin import Hub, running
from typer.testing import CliRunner, Result

from lilbee_workers.cli.main import app

REPO = "test/tiny-embed-GGUF"


def sha256_of(path: str | Path) -> str:
    """An independent hash of a file (hashlib over its bytes, in one read)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cli(*args: str) -> Result:
    env = {"LILBEE_WORKERS_SOCKET": None, "LILBEE_WORKERS_CONFIG": None}
    return CliRunner().invoke(app, list(args), env=env)


def json_lines(result: Result) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def leftovers(home: Path) -> list[str]:
    """Model bytes left in the cache: blobs, snapshot entries, partial downloads."""
    return sorted(
        str(p)
        for p in home.rglob("*")
        if p.parent.name == "blobs" or p.name.endswith((".gguf", ".incomplete"))
    )


@pytest.fixture(scope="session")
def second_embedder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Another tiny bert embedder (other weights, so other bytes and another sha256)."""
    from tiny_models import write_tiny_reranker

    path = tmp_path_factory.mktemp("models") / "tiny-embedder-2.gguf"
    return str(write_tiny_reranker(path, rank_head=False, seed=99))


@pytest.fixture
def hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_embedder: str, second_embedder: str
) -> Iterator[Hub]:
    """A stand-in hub serving ``REPO`` (Q4_K_M and Q8_0), with ``HF_ENDPOINT`` on it and
    ``HF_HOME`` in a temporary directory."""
    stand_in = Hub()
    stand_in.add(REPO, "tiny-embed-Q4_K_M.gguf", Path(tiny_embedder))
    stand_in.add(REPO, "tiny-embed-Q8_0.gguf", Path(second_embedder))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    with running(stand_in):
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
        yield stand_in
