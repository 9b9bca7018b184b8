"""Models at runtime: requests name a model and the role's worker switches to it; load,
unload and keep-alive; a broken model answers ModelError while the old one serves on.
Answers are checked against llama-cpp-python run directly on each model file."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import FAST, pid_alive, wait_until
from daemon_helpers import DaemonProcess, write_config
from lilbee_workers import Client, InvalidRequest, ModelError, Supervisor, SupervisorConfig
from lilbee_workers.cli.main import app
from lilbee_workers.config import ModelEntry

TEXTS = ["bees make honey", "the stock market fell", "hives hum in summer", "rust on iron"]


def direct_vectors(path: str, n_ctx: int) -> dict[str, np.ndarray]:
    """Each text embedded by llama-cpp-python in this process (mean pooling, normalised)."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=path, embedding=True, pooling_type=1, n_ctx=n_ctx, n_batch=512,
        n_ubatch=512, verbose=False,
    )  # fmt: skip
    try:
        return {text: np.asarray(llm.embed([text], normalize=True)[0]) for text in TEXTS}
    finally:
        llm.close()


@pytest.fixture(scope="module")
def references(model_path: str, tiny_embedder: str) -> dict[str, dict[str, np.ndarray]]:
    return {"gemma": direct_vectors(model_path, 512), "tiny": direct_vectors(tiny_embedder, 128)}


def two_models(model_path: str, tiny_embedder: str, **settings: object) -> dict[str, object]:
    return {
        "model": "gemma",
        "n_ctx": 512,
        "models": {
            "gemma": ModelEntry(path=model_path),
            "tiny": ModelEntry(path=tiny_embedder, n_ctx=128),
        },
        **settings,
    }


@pytest.fixture(scope="module")
def sup(
    make_config: Callable[..., SupervisorConfig], model_path: str, tiny_embedder: str
) -> Iterator[Supervisor]:
    # coalesce off: llama.cpp embeds gemma 3 differently (up to 0.008) when another
    # sequence shares the batch (sliding-window attention; Llama.embed does the same), so
    # merged calls could not be held to the single-text reference at 1e-4.
    config = make_config({"embed": two_models(model_path, tiny_embedder, coalesce=False)})
    with Supervisor(config) as supervisor:
        yield supervisor


def test_each_of_8_concurrent_callers_gets_its_own_models_answer(
    sup: Supervisor, references: dict[str, dict[str, np.ndarray]]
) -> None:
    before = sup.role_status("embed").generation
    failures: list[str] = []

    def caller(index: int) -> None:
        for turn in range(4):
            model = ("gemma", "tiny")[(index + turn) % 2]
            text = TEXTS[(index + turn) % len(TEXTS)]
            try:
                vector = sup.embed([text], model=model)[0]
                expected = references[model][text]
                if vector.shape != expected.shape or np.abs(vector - expected).max() > 1e-4:
                    diff = np.abs(vector - expected).max() if vector.shape == expected.shape else -1
                    failures.append(f"{model} {text!r}: wrong vector (max diff {diff:.2g})")
            except Exception as exc:
                failures.append(f"{model} {text!r}: {exc!r}")

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not failures, failures
    status = sup.role_status("embed")
    assert status.generation > before + 1  # it really switched, more than once
    assert status.models == ["gemma", "tiny"] and status.state == "ready"
    assert status.generation - before < 32  # grouped: far fewer switches than the 32 calls


def test_an_unknown_model_name_is_refused_with_the_names(sup: Supervisor) -> None:
    with pytest.raises(
        InvalidRequest, match=r"embed has no model 'nope' \(it serves: gemma, tiny\)"
    ):
        sup.embed(["x"], model="nope")
    with pytest.raises(InvalidRequest, match="no model '/etc/passwd'"):
        sup.embed(["x"], model="/etc/passwd")  # never a path


def test_load_switches_the_default_and_unload_frees_the_worker(
    sup: Supervisor, references: dict[str, dict[str, np.ndarray]]
) -> None:
    [status] = sup.load("embed", "tiny")
    assert status.model_name == "tiny" and status.models[0] == "tiny" and status.pid
    assert status.model_bytes == os.path.getsize(status.model)
    np.testing.assert_allclose(sup.embed([TEXTS[0]])[0], references["tiny"][TEXTS[0]], atol=1e-4)
    old_pid = status.pid
    [status] = sup.unload("embed")
    assert status.state == "unloaded" and status.pid is None
    wait_until(lambda: not pid_alive(old_pid), timeout=10, what="the unloaded worker exits")
    np.testing.assert_allclose(sup.embed([TEXTS[1]])[0], references["tiny"][TEXTS[1]], atol=1e-4)
    assert sup.role_status("embed").state == "ready"
    sup.load("embed", "gemma")
    np.testing.assert_allclose(sup.embed([TEXTS[2]])[0], references["gemma"][TEXTS[2]], atol=1e-4)


def test_a_broken_model_is_a_model_error_and_the_old_model_serves_on(
    make_config: Callable[..., SupervisorConfig],
    model_path: str,
    tmp_path: Path,
    references: dict[str, dict[str, np.ndarray]],
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    role = {
        "model": model_path,
        "n_ctx": 512,
        "models": {"broken": ModelEntry(path=str(broken))},
        "failed_cooldown_s": 60.0,
    }
    with Supervisor(make_config({"embed": role})) as supervisor:
        with pytest.raises(ModelError, match="cannot load model 'broken'") as caught:
            supervisor.embed(["x"], model="broken")
        assert "gguf" in str(caught.value).lower()  # llama.cpp's reason, from the log tail
        generation = supervisor.role_status("embed").generation
        vector = supervisor.embed([TEXTS[0]])[0]  # the previous model, back and right
        np.testing.assert_allclose(vector, references["gemma"][TEXTS[0]], atol=1e-4)
        started = time.monotonic()
        with pytest.raises(ModelError, match="cannot load model 'broken'"):
            supervisor.embed(["x"], model="broken")  # remembered: no second doomed load
        assert time.monotonic() - started < 1.0
        assert supervisor.role_status("embed").generation == generation
        assert supervisor.role_status("embed").state == "ready"


def test_keep_alive_unloads_an_idle_model_and_the_next_call_loads_it(
    make_config: Callable[..., SupervisorConfig],
    model_path: str,
    references: dict[str, dict[str, np.ndarray]],
) -> None:
    role = {"model": model_path, "n_ctx": 512, "keep_alive_s": 0.5}
    with Supervisor(make_config({"embed": role})) as supervisor:
        pid = supervisor.role_status("embed").pid
        assert pid is not None
        wait_until(
            lambda: supervisor.role_status("embed").state == "unloaded", timeout=10,
            what="the idle model is unloaded",
        )  # fmt: skip
        wait_until(lambda: not pid_alive(pid), timeout=10, what="its worker exits")
        vector = supervisor.embed([TEXTS[3]])[0]
        np.testing.assert_allclose(vector, references["gemma"][TEXTS[3]], atol=1e-4)
        status = supervisor.role_status("embed")
        assert status.state == "ready" and status.pid != pid


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, model_path: str, tiny_embedder: str
) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("models-daemon")
    timing = {k: v for k, v in FAST.items() if k != "debug_requests"}
    config = root / "w.toml"
    write_config(config, {"embed": {"model": "gemma", "n_ctx": 512, **timing}},
                 log_dir=str(root / "logs"))  # fmt: skip
    with config.open("a") as handle:  # nested tables: written by hand
        handle.write(f'[roles.embed.models.gemma]\npath = "{model_path}"\n')
        handle.write(f'[roles.embed.models.tiny]\npath = "{tiny_embedder}"\nn_ctx = 128\n')
    process = DaemonProcess(config)
    process.wait_ready()
    yield process
    assert process.stop() == 0


def test_models_load_unload_through_the_cli_and_the_client(
    daemon: DaemonProcess, references: dict[str, dict[str, np.ndarray]]
) -> None:
    runner = CliRunner()
    socket = ["--socket", str(daemon.socket)]
    listed = runner.invoke(app, ["models", *socket])
    assert (
        listed.exit_code == 0
        and "embed: gemma (loaded" in listed.stdout
        and "tiny" in listed.stdout
    )
    loaded = runner.invoke(app, ["load", "embed", "tiny", *socket])
    assert loaded.exit_code == 0, loaded.output
    assert "tiny (loaded" in loaded.stdout
    with Client(daemon.socket) as client:
        np.testing.assert_allclose(
            client.embed([TEXTS[0]])[0], references["tiny"][TEXTS[0]], atol=1e-4
        )
        np.testing.assert_allclose(
            client.embed([TEXTS[1]], model="gemma")[0], references["gemma"][TEXTS[1]], atol=1e-4
        )
        with pytest.raises(InvalidRequest, match="no model .nope. .it serves: gemma, tiny"):
            client.embed(["x"], model="nope")
    unloaded = runner.invoke(app, ["unload", "embed", *socket])
    assert unloaded.exit_code == 0 and "[unloaded" in unloaded.stdout
    status = runner.invoke(app, ["status", *socket])
    assert status.exit_code == 0  # unloaded is a healthy state: the next call loads
    bad = runner.invoke(app, ["load", "embed", "nope", *socket])
    assert bad.exit_code == 1 and "no model 'nope'" in bad.output


def test_the_cli_role_commands_take_a_model_name(
    daemon: DaemonProcess, references: dict[str, dict[str, np.ndarray]]
) -> None:
    """`embed --model NAME`: each name's vector is the one llama-cpp-python computes on
    that file (tiny has 32 dimensions, gemma 640); an unknown name is refused."""
    socket = ["--socket", str(daemon.socket)]
    for name in ("tiny", "gemma", "tiny"):
        result = CliRunner().invoke(app, ["embed", TEXTS[2], "--model", name, "--json", *socket])
        assert result.exit_code == 0, result.output
        vector = np.asarray(json.loads(result.stdout)["vectors"][0])
        np.testing.assert_allclose(vector, references[name][TEXTS[2]], atol=1e-4)
    bad = CliRunner().invoke(app, ["embed", "x", "--model", "nope", *socket])
    assert bad.exit_code == 1 and "no model 'nope'" in bad.stderr, bad.output
