"""What a config's workers will take, judged from GGUF metadata before anything loads:
memory (weights and KV cache) against what the machine has, threads against its cores.

The KV cache: for every attention layer llama.cpp keeps a K row of ``n_head_kv x
key_length`` and a V row of ``n_head_kv x value_length`` elements per cell, f16 (2 bytes
each). A context has its ``n_ctx`` cells padded up to a multiple of 256, per sequence when
each sequence has cells of its own (``kv_unified`` off, as the batched chat worker runs).
Sliding-window layers (gemma 3: five in six) get full-size caches too, as llama.cpp's
default ``swa_full`` (which our contexts keep) asks. Encoder models (bert and kin) keep
no KV cache. Checked against llama.cpp's own figure in tests/unit/test_memory.py.
Not counted: llama.cpp's compute buffers, which grow with ``n_ubatch`` and the vocabulary.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from dataclasses import dataclass

import msgspec
import structlog

from lilbee_workers import catalog
from lilbee_workers.config import RoleConfig, SupervisorConfig
from lilbee_workers.errors import ConfigError
from lilbee_workers.gguf_info import GGUFArray, GGUFError, GGUFInfo, read_metadata
from lilbee_workers.hub.cache import resolve_path

CACHE_ELEMENT_BYTES = 2  # f16, llama.cpp's default cache type (type_k, type_v)
CELL_PAD = 256  # llama.cpp pads a context (and each sequence's cells) to this
STEP_TOKENS = 64
"""BatchedGenerator's default step size (roles/batching.py); a test keeps them equal."""
NO_KV_CACHE = frozenset({
    "bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2",
    "jina-bert-v3", "eurobert", "gemma-embedding", "wavtokenizer-dec", "dream", "llada",
    "llada-moe", "rnd1",
})  # fmt: skip
"""Architectures llama.cpp makes no KV cache for (``llama_model::create_memory``)."""
GiB = 2**30

log = structlog.get_logger("lilbee_workers.memory")


def _pad(cells: int) -> int:
    return -(-cells // CELL_PAD) * CELL_PAD


def context_cells(n_ctx: int, sequences: int = 1, unified: bool = True) -> int:
    """The cells llama.cpp gives a context asked for ``n_ctx`` (``llama_context``'s
    constructor: padded to 256, and with per-sequence cells each sequence's share too)."""
    cells = _pad(n_ctx)
    return cells if unified else _pad(cells // sequences) * sequences


def batched_cells(streams: int, stream_ctx: int, step_tokens: int = STEP_TOKENS) -> int:
    """The cells of a ``BatchedGenerator`` context (its ``_context_params``, defaults
    otherwise: no padding rows): one sequence per stream, each with room for
    ``max(stream_ctx, step capacity)`` tokens."""
    sequences, capacity = streams, step_tokens + 2
    return context_cells(sequences * max(stream_ctx, capacity), sequences, unified=False)


def worker_cells(config: RoleConfig) -> int:
    """A worker's KV cells: its ``Llama`` context of ``n_ctx``, and with ``parallel`` > 1
    the batched context beside it (same model, one copy of the weights), whose step holds
    ``config.batch_step_tokens()``, the rule the chat worker's engine uses too."""
    cells = context_cells(config.n_ctx)
    if config.parallel == 1:
        return cells
    step = config.batch_step_tokens()
    return cells + batched_cells(config.parallel, config.n_ctx, step)


def cache_bytes(model_path: str, cells: int) -> int:
    """The KV cache of ``cells`` cells of this model (e.g. a worker's ``llama_n_ctx`` of
    each of its contexts added up), from its GGUF metadata."""
    return cells * kv_bytes_per_cell(_metadata(model_path, os.stat(model_path)))


def _per_layer(info: GGUFInfo, key: str, layers: int) -> list[int] | None:
    """A per-layer figure: one number for all layers, or an array with one per layer."""
    value = info.get(key)
    if isinstance(value, GGUFArray) and value.values is not None and value.length == layers:
        return [int(v) for v in value.values]
    return [int(value)] * layers if isinstance(value, int) else None


def kv_bytes_per_cell(info: GGUFInfo) -> int:
    """Bytes one KV cell takes across all layers (``GGUFError`` if the metadata lacks
    the shape)."""
    arch = info.architecture
    if arch in NO_KV_CACHE:
        return 0
    layers = info.get(f"{arch}.block_count")
    if not isinstance(layers, int) or layers < 1:
        raise GGUFError(f"no {arch}.block_count in the metadata: cannot size the KV cache")
    heads = _per_layer(info, f"{arch}.attention.head_count", layers)
    kv_heads = _per_layer(info, f"{arch}.attention.head_count_kv", layers) or heads
    n_embd = info.get(f"{arch}.embedding_length")
    if heads is None or kv_heads is None or not isinstance(n_embd, int):
        raise GGUFError(f"no {arch} head counts in the metadata: cannot size the KV cache")
    head_dim = n_embd // max(heads[0] or max(heads), 1)  # llama.cpp: layer 0's
    lengths = [info.get(f"{arch}.attention.{k}_length") for k in ("key", "value")]
    width = sum(n if isinstance(n, int) else head_dim for n in lengths)
    return sum(kv_heads) * width * CACHE_ELEMENT_BYTES


def model_bytes(path: str, info: GGUFInfo) -> int:
    """The weights: the file's size, all its parts for a split GGUF."""
    parts = info.get("split.count")
    match = re.fullmatch(r"(.*)-\d{5}-of-(\d{5})\.gguf", path)
    if not isinstance(parts, int) or parts <= 1 or match is None:
        return os.path.getsize(path)
    return sum(
        os.path.getsize(f"{match[1]}-{i:05d}-of-{match[2]}.gguf") for i in range(1, parts + 1)
    )


@dataclass
class RoleMemory:
    """What one role's workers take: per worker a KV cache and a copy of the weights."""

    role: str
    parallel: int
    n_ctx: int
    workers: int
    kv_bytes: int
    weights_bytes: int

    @property
    def total(self) -> int:
        return self.workers * (self.kv_bytes + self.weights_bytes)

    def describe(self) -> str:
        """``parallel 8 x n_ctx 2048: KV cache 324 MiB + weights 241 MiB``, per worker."""
        text = f"parallel {self.parallel} x n_ctx {self.n_ctx}: KV cache {size_text(self.kv_bytes)}"
        text += f" + weights {size_text(self.weights_bytes)}"
        return text + (f", x {self.workers} workers" if self.workers > 1 else "")


def size_text(n_bytes: int) -> str:
    """``37.12 GiB``, or ``360 MiB`` below a GiB."""
    if abs(n_bytes) < GiB:
        return f"{n_bytes / 2**20:.0f} MiB"
    return f"{n_bytes / GiB:.2f} GiB"


def role_memory(role: str, config: RoleConfig) -> RoleMemory | None:
    """The most any of the role's models takes (a worker holds one at a time); None when
    a model file cannot be read yet (not pulled, missing: the worker says so at start),
    or the role runs on a GPU (``n_gpu_layers``), whose memory is not judged here."""
    if config.n_gpu_layers != 0:
        return None
    worst: RoleMemory | None = None
    try:
        for name in catalog.names(config):
            model = catalog.config_for(config, name)
            path = model.resolved_model()
            info = _metadata(path, os.stat(path))
            weights = model_bytes(path, info)
            if role == "vision" and model.mmproj:
                weights += os.path.getsize(resolve_path(model.mmproj, projector=True))
            kv = worker_cells(model) * kv_bytes_per_cell(info)
            workers = config.replicas + (1 if config.standby else 0)
            found = RoleMemory(role, config.parallel, model.n_ctx, workers, kv, weights)
            if worst is None or found.total > worst.total:
                worst = found
    except (ConfigError, GGUFError, OSError):
        return None
    return worst


def _metadata(path: str, stat: os.stat_result) -> GGUFInfo:
    """The file's metadata, read once per file version (a header read takes ~0.1 s)."""
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _READ:
        if len(_READ) >= 32:  # a config names a handful of files
            _READ.clear()
        _READ[key] = read_metadata(path)
    return _READ[key]


_READ: dict[tuple[str, int, int], GGUFInfo] = {}


def available_bytes() -> int | None:
    """Memory the workers may take: ``MemAvailable``, or less where a cgroup (a
    container, a systemd ``MemoryMax``) limits this process. None off Linux."""
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        free = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:  # cgroup v2: the limit less what the group already uses
        with open("/proc/self/cgroup") as groups:
            group = next(line[3:].strip() for line in groups if line.startswith("0::"))
        base = f"/sys/fs/cgroup{group.rstrip('/')}"
        with open(f"{base}/memory.max") as limit, open(f"{base}/memory.current") as used:
            text = limit.read().strip()
            if text != "max":
                free = min(free, int(text) - int(used.read()))
    except (OSError, StopIteration, ValueError):
        pass
    return free


def check_fits(config: SupervisorConfig, available: int | None = None) -> list[RoleMemory]:
    """Every judged role's needs; ``ConfigError`` with the figures when they do not fit
    together in ``available`` (default: ``available_bytes()``). Local workers only."""
    if config.backend != "local":
        return []
    needs = [m for role, c in config.roles.items() if (m := role_memory(role, c)) is not None]
    free = available_bytes() if available is None else available
    if free is None or not needs or sum(m.total for m in needs) <= free:
        return needs
    worst = max(needs, key=lambda m: m.total)
    others = sum(m.total for m in needs) - worst.total
    raise DoesNotFit(worst, free, others)


class DoesNotFit(ConfigError):
    """A role's workers need more memory than is left for them; the figures say so."""

    def __init__(self, need: RoleMemory, free: int, others: int) -> None:
        self.role = need.role
        text = (
            f"roles.{need.role}: parallel {need.parallel} x n_ctx {need.n_ctx} needs a "
            f"{size_text(need.kv_bytes)} KV cache (+{size_text(need.weights_bytes)} weights)"
        )
        if need.workers > 1:
            text += f" per worker, x {need.workers} workers = {size_text(need.total)}"
        text += f"; {size_text(max(free - others, 0))} available"
        if others:
            text += f" ({size_text(free)} free less {size_text(others)} for the other roles)"
        fix = ", or replicas" if need.workers > 1 else ""
        super().__init__(f"{text}: lower parallel or n_ctx{fix}")


def default_threads() -> int:
    """The threads llama-cpp-python gives a ``Llama`` without ``n_threads``."""
    return max(multiprocessing.cpu_count() // 2, 1)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as taskset or a cgroup set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class ThreadLoad:
    """The threads the workers of a config compute with at once, and the cores."""

    cores: int
    roles: dict[str, tuple[int, int]]
    """Per role: workers that compute at once (a standby waits idle: not counted), and
    threads each (``n_threads``, or llama-cpp-python's default)."""

    @property
    def total(self) -> int:
        return sum(workers * threads for workers, threads in self.roles.values())

    @property
    def over(self) -> bool:
        return self.total > self.cores

    def describe(self) -> str:
        parts = ", ".join(f"{role} {w} x {t}" for role, (w, t) in self.roles.items())
        return f"{self.total} threads ({parts}; workers x n_threads) on {self.cores} cores"


def thread_load(config: SupervisorConfig, cores: int | None = None) -> ThreadLoad | None:
    """The local workers' threads against this machine's cores (None with Ray: its
    actors run on other machines' cores)."""
    if config.backend != "local":
        return None
    roles = {r: (c.replicas, c.n_threads or default_threads()) for r, c in config.roles.items()}
    return ThreadLoad(usable_cores() if cores is None else cores, roles)


THREADS_FIX = "set n_threads so that workers x n_threads, summed over the roles, is at most"


def threads_warning(config: SupervisorConfig, cores: int | None = None) -> str | None:
    """A warning when the local workers' threads together exceed the cores, else None."""
    load = thread_load(config, cores)
    if load is None or not load.over:
        return None
    return (
        f"the workers' threads exceed the cores: {load.describe()}. llama.cpp's threads "
        "spin against each other and every worker slows down (two chat replicas x 2 "
        f"threads on 2 cores ran 16-33 tok/s, x 1 thread 90-95); {THREADS_FIX} {load.cores}"
    )


def check_machine(config: SupervisorConfig) -> None:
    """At start: refuse a config whose workers will not fit in memory (``ConfigError``
    with the figures), and log a warning when their threads exceed the cores."""
    check_fits(config)
    warn_threads(config)


def warn_threads(config: SupervisorConfig) -> None:
    """Log ``threads_warning`` (at start and on each reload), so the journal says why
    every role slowed down."""
    warning = threads_warning(config)
    if warning is not None:
        log.warning("the workers' threads exceed the cores", detail=warning)


def check_reload(old: SupervisorConfig, new: SupervisorConfig, changed: list[str]) -> None:
    """A reload restarts only the ``changed`` roles: their new workers must fit in what
    is free now plus what their old workers give back (``ConfigError`` if not)."""
    warn_threads(new)
    free = available_bytes()
    if new.backend != "local" or not changed or free is None:
        return
    olds = [role_memory(role, old.roles[role]) for role in changed]
    freed = sum(need.total for need in olds if need is not None)
    moving = msgspec.structs.replace(new, roles={role: new.roles[role] for role in changed})
    check_fits(moving, available=free + freed)
