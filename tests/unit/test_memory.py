"""The memory a config needs, from GGUF metadata (lilbee_workers/memory.py), checked
against llama.cpp's own figure: the ``llama_kv_cache: size = X MiB`` line it logs when it
makes a context, for a plain ``Llama`` and for a real ``BatchedGenerator``. A config
that will not fit is refused at start with the figures; too many threads are warned of."""

from __future__ import annotations

import ctypes
import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
from tiny_llama import write_tiny_llama

from lilbee_workers import memory
from lilbee_workers.config import RoleConfig, SupervisorConfig
from lilbee_workers.errors import ConfigError
from lilbee_workers.gguf_info import read_metadata
from lilbee_workers.roles.batching import BatchedGenerator
from lilbee_workers.supervisor import Supervisor

MiB = 2**20
SIZE = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells")


@pytest.fixture(scope="module")
def tiny_llamas(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Tiny llama models by K/V head count: 4 (one per query head) and 1 (GQA)."""
    root = tmp_path_factory.mktemp("memory")
    return {kv: write_tiny_llama(root / f"kv{kv}.gguf", n_head_kv=kv) for kv in (4, 1)}


@pytest.fixture
def kv_log() -> Iterator[list[str]]:
    """llama.cpp's log lines while the test runs (its own logger restored after)."""
    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def keep(level: int, text: bytes, user: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def logged_mib(lines: list[str]) -> float:
    """The KV cache llama.cpp made, in MiB: the sum of its ``size =`` lines (a
    sliding-window model logs one for its full layers, one for its window layers)."""
    sizes = [float(m[1]) for line in lines if (m := SIZE.search(line))]
    assert sizes, "llama.cpp logged no KV cache size"
    lines.clear()
    return sum(sizes)


def llama(path: Path | str, n_ctx: int) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=1, verbose=False)


@pytest.mark.parametrize("n_head_kv", [4, 1])
def test_the_estimate_is_llama_cpps_own_figure(
    tiny_llamas: dict[int, Path], kv_log: list[str], n_head_kv: int
) -> None:
    path = tiny_llamas[n_head_kv]
    per_cell = memory.kv_bytes_per_cell(read_metadata(path))
    llm = llama(path, n_ctx=300)  # padded to 512 cells
    try:
        assert logged_mib(kv_log) == pytest.approx(
            memory.context_cells(300) * per_cell / MiB, abs=0.006
        )
        for streams, stream_ctx, step in [(4, 96, 32), (3, 300, 64), (8, 512, 64)]:
            with BatchedGenerator.from_llama(
                llm, streams=streams, stream_ctx=stream_ctx, step_tokens=step
            ) as gen:
                import llama_cpp

                cells = memory.batched_cells(streams, stream_ctx, step)
                assert llama_cpp.llama_n_ctx(gen._ctx) == cells
                assert logged_mib(kv_log) == pytest.approx(cells * per_cell / MiB, abs=0.006)
                assert memory.cache_bytes(str(path), cells) == cells * per_cell
    finally:
        llm.close()


def test_a_sliding_window_model_gets_full_size_caches_as_estimated(
    model_path: str, kv_log: list[str]
) -> None:
    """gemma 3 keeps a window cache for five layers in six; llama.cpp's default
    ``swa_full`` makes it full size, so the estimate is exact there too."""
    per_cell = memory.kv_bytes_per_cell(read_metadata(model_path))
    llm = llama(model_path, n_ctx=1000)
    try:
        assert logged_mib(kv_log) == pytest.approx(
            memory.context_cells(1000) * per_cell / MiB, abs=0.01
        )
    finally:
        llm.close()


def test_the_step_size_is_the_batched_generators_default() -> None:
    default = inspect.signature(BatchedGenerator.__init__).parameters["step_tokens"].default
    assert default == memory.STEP_TOKENS


def test_a_roles_need_counts_every_worker_and_the_batched_context(
    tiny_llamas: dict[int, Path], kv_log: list[str]
) -> None:
    """parallel > 1: the worker's ``Llama`` context plus the batched one, per replica;
    the per-cell figure from llama.cpp's own log of a 512-cell context."""
    path = tiny_llamas[1]
    llama(path, n_ctx=512).close()
    per_cell_logged = logged_mib(kv_log) * MiB / 512
    config = RoleConfig(model=str(path), n_ctx=1024, parallel=4, replicas=2)
    need = memory.role_memory("chat", config)
    assert need is not None
    assert need.kv_bytes == pytest.approx((1024 + 5 * 1024) * per_cell_logged, rel=1e-3)
    assert need.weights_bytes == os.path.getsize(path)
    assert need.total == 2 * (need.kv_bytes + need.weights_bytes)
    single = memory.role_memory("chat", msgspec.structs.replace(config, parallel=1))
    assert single is not None and single.kv_bytes == pytest.approx(1024 * per_cell_logged, rel=1e-3)


def test_a_short_context_is_sized_by_the_step_as_the_worker_makes_it(
    tiny_llamas: dict[int, Path], kv_log: list[str]
) -> None:
    """n_ctx below the step (min(n_batch, n_ubatch) tokens, as child/engine.py opens the
    generator): each sequence gets the step's room, as llama.cpp's own figure shows."""
    import llama_cpp

    path = tiny_llamas[4]
    config = RoleConfig(model=str(path), n_ctx=256, parallel=3, n_ubatch=512)
    llm = llama(path, n_ctx=256)
    try:
        with BatchedGenerator.from_llama(llm, streams=3, stream_ctx=256, step_tokens=512) as gen:
            cells = llama_cpp.llama_n_ctx(llm.ctx) + llama_cpp.llama_n_ctx(gen._ctx)
            logged = logged_mib(kv_log) * MiB
    finally:
        llm.close()
    need = memory.role_memory("chat", config)
    assert need is not None and cells == memory.worker_cells(config) == 256 + 4 * 768
    assert need.kv_bytes == pytest.approx(logged, abs=0.02 * MiB)


def config_of(model: str, **chat: Any) -> SupervisorConfig:
    return SupervisorConfig(
        roles={"embed": RoleConfig(model=model), "chat": RoleConfig(model=model, **chat)}
    ).validate()


def test_a_config_that_does_not_fit_is_refused_with_the_figures(model_path: str) -> None:
    config = config_of(model_path, parallel=64, n_ctx=32768)
    per_cell = memory.kv_bytes_per_cell(read_metadata(model_path))
    kv = (32768 + 65 * 32768) * per_cell / 2**30
    weights = os.path.getsize(model_path) / 2**20
    other = (2048 * per_cell + os.path.getsize(model_path)) / 2**30  # the embed role
    with pytest.raises(ConfigError) as refused:
        memory.check_fits(config, available=3 * 2**30)
    message = str(refused.value)
    assert message.startswith(
        f"roles.chat: parallel 64 x n_ctx 32768 needs a {kv:.2f} GiB KV cache "
        f"(+{weights:.0f} MiB weights); {3 - other:.2f} GiB available"
    )
    assert "for the other roles" in message and "lower parallel or n_ctx" in message
    assert kv > 3  # the figure itself is what does not fit
    fits = memory.check_fits(config, available=100 * 2**30)
    assert [m.role for m in fits] == ["embed", "chat"]


def test_the_supervisor_and_the_daemon_refuse_at_start(
    model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve`` makes its ``Daemon`` before binding the socket: the refusal comes first."""
    from lilbee_workers.service.daemon import Daemon

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**30)
    config = config_of(model_path, parallel=16, n_ctx=32768)
    with pytest.raises(ConfigError, match=r"roles.chat: parallel 16 x n_ctx 32768 needs"):
        Supervisor(config)
    with pytest.raises(ConfigError, match=r"roles.chat: parallel 16 x n_ctx 32768 needs"):
        Daemon(config)


def test_unreadable_models_gpu_roles_and_ray_are_not_judged(tmp_path: Path) -> None:
    missing = config_of(str(tmp_path / "none.gguf"), parallel=64, n_ctx=32768)
    assert memory.check_fits(missing, available=1) == []
    gpu = RoleConfig(model=str(tmp_path / "none.gguf"), n_gpu_layers=-1)
    assert memory.role_memory("chat", gpu) is None
    ray = msgspec.structs.replace(missing, backend="ray")
    assert memory.check_fits(ray, available=1) == []


def test_available_memory_is_the_kernels_figure() -> None:
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(meminfo["MemTotal"].split()[0]) * 1024
    free = memory.available_bytes()
    assert free is not None and 0 < free <= total


def threads_config(
    replicas: int, n_threads: int | None, backend: str = "local"
) -> SupervisorConfig:
    chat = RoleConfig(model="m.gguf", replicas=replicas, n_threads=n_threads)
    return SupervisorConfig(roles={"chat": chat}, backend=backend)  # type: ignore[arg-type]


def test_threads_past_the_cores_are_warned_of() -> None:
    """The measured collapse: two chat replicas x 2 threads on 2 cores."""
    warning = memory.threads_warning(threads_config(2, 2), cores=2)
    assert warning is not None
    assert "4 threads (chat 2 x 2;" in warning and "on 2 cores" in warning
    assert "at most 2" in warning
    assert memory.threads_warning(threads_config(2, 1), cores=2) is None
    assert memory.threads_warning(threads_config(2, 2, "ray"), cores=2) is None


def test_unset_threads_count_as_llama_cpp_pythons_default(tiny_llamas: dict[int, Path]) -> None:
    """The reference: the threads a ``Llama`` opened without ``n_threads`` computes with."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(tiny_llamas[4]), n_ctx=256, verbose=False)
    try:
        assert memory.default_threads() == llm.context_params.n_threads
    finally:
        llm.close()
    cores = 3 * memory.default_threads() - 1
    assert memory.threads_warning(threads_config(3, None), cores=cores) is not None
    assert memory.threads_warning(threads_config(3, None), cores=cores + 1) is None


def test_the_supervisor_logs_the_threads_warning(
    model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "usable_cores", lambda: 2)
    config = config_of(model_path, replicas=2, n_threads=2)
    with structlog.testing.capture_logs() as logs:
        Supervisor(config)
    [warned] = [e for e in logs if e["event"] == "the workers' threads exceed the cores"]
    assert warned["log_level"] == "warning" and "on 2 cores" in warned["detail"]


def test_per_layer_head_counts_are_summed_and_encoders_keep_no_cache() -> None:
    """A hybrid model lists K/V heads per layer (0 for a layer without attention)."""
    from lilbee_workers.gguf_info import GGUFArray, GGUFInfo

    hybrid = GGUFInfo(3, 0, {
        "general.architecture": "lfm2", "lfm2.block_count": 4, "lfm2.embedding_length": 256,
        "lfm2.attention.head_count": 4,
        "lfm2.attention.head_count_kv": GGUFArray(4, 4, [0, 2, 0, 2]),
    })  # fmt: skip
    assert memory.kv_bytes_per_cell(hybrid) == (2 + 2) * (64 + 64) * 2
    bert = GGUFInfo(3, 0, {"general.architecture": "bert", "bert.block_count": 12})
    assert memory.kv_bytes_per_cell(bert) == 0


def test_the_daemons_start_log_has_the_threads_warning(
    model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lilbee_workers.service.daemon import Daemon

    monkeypatch.setattr(memory, "usable_cores", lambda: 2)
    with structlog.testing.capture_logs() as logs:
        Daemon(config_of(model_path, replicas=2, n_threads=2))
    [warned] = [e for e in logs if e["event"] == "the workers' threads exceed the cores"]
    assert "5 threads (embed 1 x 1, chat 2 x 2;" in warned["detail"]


def test_a_reload_that_will_not_fit_is_refused_before_any_worker_stops(
    model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the changed roles restart: their new needs against what is free now plus
    what their old workers give back."""
    sup = Supervisor(config_of(model_path))  # not started: a refused reload touches nothing
    per_cell = memory.kv_bytes_per_cell(read_metadata(model_path))
    old_chat = 2048 * per_cell + os.path.getsize(model_path)
    new_chat = (1024 + 5 * 1024) * per_cell + os.path.getsize(model_path)
    bigger = config_of(model_path, parallel=4, n_ctx=1024)
    monkeypatch.setattr(memory, "available_bytes", lambda: new_chat - old_chat - 1)
    with pytest.raises(ConfigError, match=r"^roles.chat: parallel 4 x n_ctx 1024 needs a "):
        sup.reload(bigger)
    assert sup.config.roles["chat"].parallel == 1
    monkeypatch.setattr(memory, "available_bytes", lambda: new_chat - old_chat)
    memory.check_reload(sup.config, bigger, ["chat"])  # just fits: no error
