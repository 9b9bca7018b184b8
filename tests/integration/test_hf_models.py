"""``hf:ORG/REPO[:QUANT]`` models: served from the local cache, offline; a missing one
fails its role naming the pull; ``doctor``, ``models --local``, ``rm`` and ``auto_pull``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hub_fixtures import REPO, cli, hub, leftovers, second_embedder, sha256_of
from hub_standin import Hub

from daemon_helpers import DaemonProcess, write_config
from lilbee_workers import Supervisor, SupervisorConfig
from lilbee_workers.errors import WorkerUnavailable
from tiny_models import png_bytes

__all__ = ["hub", "second_embedder"]  # fixtures
GEMMA = "test/gemma-3-270m-it-GGUF"


def test_roles_on_hf_serve_offline_and_embed_as_llama_cpp_does_on_the_source(
    hub: Hub, model_path: str, tiny_projector: str, make_config: Callable[..., SupervisorConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from llama_cpp import Llama

    hub.add(GEMMA, "gemma-3-270m-it-Q4_K_M.gguf", Path(model_path))  # served from the fixture
    hub.add(GEMMA, "mmproj-gemma-3-270m-it-f16.gguf", Path(tiny_projector))
    assert cli("pull", f"{GEMMA}:Q4_K_M").exit_code == 0  # the model and its projector
    fetched = len(hub.gets)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # no hub at all from here on
    texts = ["bees make honey", "the queen of the hive", "rust and python code"]
    name = f"hf:{GEMMA}:Q4_K_M"
    roles = {"embed": {"model": name, "n_ctx": 256}, "vision": {"model": name, "mmproj": name}}
    with Supervisor(make_config(roles)) as sup:
        got = sup.embed(texts)
        seen = sup.vision(png_bytes(), "What is in the picture?", max_tokens=4).collect()
        status, _ = sup.status()
    assert seen.completion_tokens == 4 and seen.prompt_tokens > 16  # the image's 16 tokens
    assert status.model.endswith("gemma-3-270m-it-Q4_K_M.gguf") and "/snapshots/" in status.model
    assert sha256_of(status.model) == sha256_of(model_path)
    llm = Llama(model_path=model_path, embedding=True, pooling_type=1, n_ctx=256, n_batch=256,
                n_ubatch=256, verbose=False)  # fmt: skip
    try:
        reference = np.asarray(llm.embed(texts, normalize=True), dtype=np.float32)
    finally:
        llm.close()
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() < 1e-5  # float noise of batch shapes at most
    assert len(hub.gets) == fetched  # serving downloaded nothing


def test_a_missing_hf_model_fails_its_role_naming_the_pull(
    hub: Hub, make_config: Callable[..., SupervisorConfig]
) -> None:
    with Supervisor(make_config({"embed": {"model": "hf:test/absent-GGUF:Q8_0"}})) as sup:
        [status] = sup.status()
        assert status.state == "failed"
        assert "run: lilbee-workers pull test/absent-GGUF:Q8_0" in status.last_exit
        assert status.model == "hf:test/absent-GGUF:Q8_0"
        with pytest.raises(WorkerUnavailable, match="lilbee-workers pull test/absent-GGUF:Q8_0"):
            sup.embed(["never served"])
    assert hub.gets == []  # serving never downloads


def test_doctor_checks_hf_models_as_it_checks_paths(hub: Hub, tmp_path: Path) -> None:
    assert cli("pull", REPO).exit_code == 0
    roles = {"embed": {"model": f"hf:{REPO}", "n_ctx": 256}, "rerank": {"model": f"hf:{REPO}"},
             "chat": {"model": "hf:test/absent-GGUF"}}  # fmt: skip
    config = write_config(tmp_path / "c.toml", roles, log_dir=str(tmp_path / "logs"))
    report = json.loads(cli("doctor", "--config", str(config), "--json").stdout)
    found = {c["check"]: c for c in report["checks"]}
    assert found["embed.model"]["level"] == "ok" and "bert" in found["embed.model"]["message"]
    assert found["rerank.model"]["level"] == "error"  # a bert embedder has no rank head
    assert "has no rank head" in found["rerank.model"]["message"]
    assert found["chat.model"]["level"] == "error"
    assert "run: lilbee-workers pull test/absent-GGUF" in found["chat.model"]["message"]


def test_models_local_lists_the_cache_and_rm_removes_one(
    hub: Hub, tiny_embedder: str, tmp_path: Path
) -> None:
    assert cli("pull", f"{REPO}:Q4_K_M").exit_code == 0
    assert cli("pull", f"{REPO}:Q8_0").exit_code == 0
    listing = json.loads(cli("models", "--local", "--json").stdout)
    assert listing["cache"] == str(tmp_path / "hf" / "hub")
    rows = {row["name"]: row for row in listing["models"]}
    assert sorted(rows) == [f"{REPO}:Q4_K_M", f"{REPO}:Q8_0"]
    row = rows[f"{REPO}:Q4_K_M"]
    assert row["size"] == Path(tiny_embedder).stat().st_size and row["arch"] == "bert"
    assert row["roles"] == ["embed"]  # no chat template, no rank head, no projector
    table = cli("models", "--local")
    assert f"hf:{REPO}:Q8_0" in table.stdout and "embed" in table.stdout

    removed = cli("rm", f"{REPO}:q8_0")
    assert removed.exit_code == 0 and "tiny-embed-Q8_0.gguf" in removed.stdout
    rows = json.loads(cli("models", "--local", "--json").stdout)["models"]
    assert [r["name"] for r in rows] == [f"{REPO}:Q4_K_M"]
    assert cli("rm", REPO).exit_code == 0
    assert leftovers(tmp_path / "hf") == []
    again = cli("rm", REPO)
    assert again.exit_code == 1 and f"{REPO} is not in the local model cache" in again.output
    empty = cli("models", "--local")  # an empty cache says how to fill it
    assert empty.exit_code == 0 and "no models in" in empty.stdout
    assert "lilbee-workers pull" in empty.stdout


def test_serve_with_auto_pull_pulls_what_is_missing_and_serves_it(
    hub: Hub, tiny_embedder: str, tmp_path: Path
) -> None:
    from llama_cpp import Llama

    roles = {"embed": {"model": f"hf:{REPO}:Q4_K_M"}}  # the two-line config, plus auto_pull
    config = write_config(tmp_path / "c.toml", roles, auto_pull=True, log_dir=str(tmp_path))
    daemon = DaemonProcess(config)
    try:
        vector = daemon.wait_ready().embed(["bees make honey"])
        log = daemon.log.read_text(errors="replace")
    finally:
        assert daemon.stop() == 0
    assert "auto_pull: pulling a missing model" in log
    assert "tiny-embed-Q4_K_M.gguf: verified" in log and sha256_of(tiny_embedder) in log
    llm = Llama(model_path=tiny_embedder, embedding=True, pooling_type=1, verbose=False)
    try:
        reference = np.asarray(llm.embed(["bees make honey"], normalize=True), dtype=np.float32)
    finally:
        llm.close()
    assert np.abs(vector - reference).max() < 1e-5
    assert [name for name, _ in hub.gets] == ["tiny-embed-Q4_K_M.gguf"]


def test_a_models_entry_may_name_an_hf_model(hub: Hub, second_embedder: str) -> None:
    from lilbee_workers import catalog
    from lilbee_workers.config import ModelEntry, RoleConfig

    assert cli("pull", f"{REPO}:Q8_0").exit_code == 0
    config = RoleConfig(models={"small": ModelEntry(path=f"hf:{REPO}:Q8_0")})
    path = catalog.config_for(config, "small").resolved_model()
    assert path.endswith("/tiny-embed-Q8_0.gguf") and sha256_of(path) == sha256_of(second_embedder)
    assert catalog.names(RoleConfig(model=f"hf:{REPO}:Q8_0")) == ["tiny-embed-GGUF:Q8_0"]
