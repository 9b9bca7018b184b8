"""The extra rows of bench/throughput.py: rank rerank coalescing, replicas recovery, and
the peer a user would pick instead (llama-cpp-python's own OpenAI-compatible server)
under the same concurrent embed load over HTTP as our daemon's HTTP face.

Every figure is measured side by side in one run, in alternating blocks.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lilbee_workers import RoleConfig, Supervisor, SupervisorConfig
from lilbee_workers.api import WorkerAPI

QUERY = "how do honey bees make honey from nectar"
DOCUMENTS = [f"document {i}: worker bees carry nectar to the hive number {i}" for i in range(8)]
TEXT = "worker bees gather nectar from the flowers near hive {}"


def concurrent(callers: int, calls: int, one_call: Callable[[int, int], int]) -> dict[str, float]:
    """``callers`` threads making ``calls`` calls each; ``one_call`` returns the items
    it handled. Items/s over the whole run, and call latency percentiles."""
    latencies: list[float] = []
    items = [0] * callers
    lock = threading.Lock()
    start = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        start.wait()
        for call in range(calls):
            began = time.perf_counter()
            items[index] += one_call(index, call)
            with lock:
                latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "items_per_s": sum(items) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def alternate(
    loads: dict[str, Callable[[], dict[str, float]]], rounds: int
) -> dict[str, dict[str, float]]:
    """Each load once per round, in turn; the median of each figure."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in loads}
    for _ in range(rounds):
        for name, load in loads.items():
            runs[name].append(load())
    return {
        name: {k: round(statistics.median(r[k] for r in results), 1) for k in results[0]}
        for name, results in runs.items()
    }


# ------------------------------------------------------------------ rank rerank


def write_minilm_sized_reranker(path: Path) -> Path:
    """A random-weight bert cross-encoder of MiniLM-L6's shape (384 wide, 6 layers):
    no reranker weights can be downloaded here, and throughput only needs the shape."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import write_tiny_reranker

    return write_tiny_reranker(path, n_embd=384, n_head=12, n_layer=6, n_ff=1536, n_ctx=512)


def rerank_rows(callers: int, calls: int, rounds: int) -> dict[str, Any]:
    """16 callers x 8 documents each, rank rerank coalescing on vs off: documents/s."""
    model = str(write_minilm_sized_reranker(Path(tempfile.mkdtemp()) / "reranker.gguf"))

    def config(coalesce: bool) -> SupervisorConfig:
        role = RoleConfig(model=model, n_ctx=512, coalesce=coalesce)
        return SupervisorConfig(roles={"rerank": role}, log_dir=tempfile.mkdtemp())

    with (
        Supervisor(config(True), queue_wait_s=120) as on,
        Supervisor(config(False), queue_wait_s=120) as off,
    ):

        def load(api: WorkerAPI) -> Callable[[], dict[str, float]]:
            return lambda: concurrent(
                callers, calls, lambda i, c: len(api.rerank(f"{QUERY} {i} {c}", DOCUMENTS))
            )

        on.rerank(QUERY, DOCUMENTS), off.rerank(QUERY, DOCUMENTS)
        figures = alternate({"on": load(on), "off": load(off)}, rounds)
    figures["ratio"] = {"docs_per_s": round(
        figures["on"]["items_per_s"] / figures["off"]["items_per_s"], 2)}  # fmt: skip
    return {"callers": callers, "documents": len(DOCUMENTS), **figures}


# ------------------------------------------------------------------ replicas recovery


def replica_recovery(model: str, texts: list[str], repeats: int = 5) -> dict[str, float]:
    """SIGKILL of the replica serving a call, 50 ms in: that call's answer, less its own
    time measured just before and the 50 ms it had run (medians): what the loss cost."""
    role = RoleConfig(
        model=model, n_ctx=512, replicas=2, coalesce=False, max_restarts=1000, restart_backoff_s=0.0
    )
    config = SupervisorConfig(roles={"embed": role}, log_dir=tempfile.mkdtemp())
    cost, answered = [], []
    with Supervisor(config) as sup:
        sup.embed(["warm"]), sup.embed(["warm"])
        for _ in range(repeats):
            wait_ready(sup, 2)
            time.sleep(0.5)  # let a reload that just finished give the CPU back
            began = time.perf_counter()
            sup.embed(texts)
            alone = time.perf_counter() - began

            def kill_busy() -> None:
                replicas = sup.role_status("embed").replicas
                busy = [r.pid for r in replicas if r.in_flight and r.pid]
                if busy:
                    os.kill(busy[0], signal.SIGKILL)

            threading.Timer(0.05, kill_busy).start()
            began = time.perf_counter()
            sup.embed(texts)
            answered.append(time.perf_counter() - began)
            cost.append(answered[-1] - alone - 0.05)
    return {
        "mid_call_kill_to_answer_s": statistics.median(answered),
        "loss_cost_s": statistics.median(cost),
    }


def wait_ready(sup: Supervisor, replicas: int) -> None:
    deadline = time.monotonic() + 120
    while sum(r.state == "ready" for r in sup.role_status("embed").replicas) < replicas:
        if time.monotonic() > deadline:
            raise RuntimeError("replicas did not come back")
        time.sleep(0.05)


# ------------------------------------------------------------------ the peer server


def with_mean_pooling(model: str, out: Path) -> Path:
    """A copy of the GGUF with ``<arch>.pooling_type = 1`` (mean): llama-cpp-python's
    server has no pooling option, and gemma 3 declares none (it would answer one vector
    per token). Our daemon serves the same copy, so both do the same work."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(model, "r")
    field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert field is not None
    arch = str(bytes(field.parts[field.data[0]]), encoding="utf-8")
    writer = gguf.GGUFWriter(str(out), arch=arch, endianess=reader.endianess)
    key = f"{arch}.pooling_type"
    copy_with_new_metadata(reader, writer, {key: MetadataDetails(gguf.GGUFValueType.UINT32, 1)}, [])
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(command: list[str], port: int, name: str) -> Iterator[str]:
    """A server process on 127.0.0.1:``port``; its base URL once it answers."""
    import httpx

    log = open(Path(tempfile.mkdtemp()) / f"{name}.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited; see {log.name}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log.name}")
            time.sleep(0.3)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def peer_rows(model: str, callers: list[int], calls: int, rounds: int) -> list[dict[str, Any]]:
    """Our daemon's /v1/embeddings vs ``python -m llama_cpp.server``'s, same GGUF copy,
    one short text per request, ``callers`` concurrent HTTP clients."""
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from daemon_helpers import write_config

    workdir = Path(tempfile.mkdtemp())
    pooled = str(with_mean_pooling(model, workdir / "gemma-mean.gguf"))
    ours_port, peer_port = free_port(), free_port()
    config = write_config(
        workdir / "w.toml",
        {"embed": {"model": pooled, "n_ctx": 512}},
        log_dir=str(workdir / "logs"),
        socket=str(workdir / "d.sock"),
    )
    ours_cmd = [sys.executable, "-c", "from lilbee_workers.cli.main import app; app()", "serve",
                "--config", str(config), "--http", f"127.0.0.1:{ours_port}"]  # fmt: skip
    peer_cmd = [sys.executable, "-m", "llama_cpp.server", "--model", pooled, "--embedding",
                "true", "--n_ctx", "512", "--host", "127.0.0.1",
                "--port", str(peer_port)]  # fmt: skip
    rows = []
    with served(ours_cmd, ours_port, "ours") as ours, served(peer_cmd, peer_port, "peer") as peer:
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        with httpx.Client(timeout=600, limits=limits) as client:

            def load(url: str, n: int) -> Callable[[], dict[str, float]]:
                def one(index: int, call: int) -> int:
                    body = {"input": TEXT.format(index * 1000 + call), "model": "embed"}
                    reply = client.post(f"{url}/v1/embeddings", json=body)
                    reply.raise_for_status()
                    vector = reply.json()["data"][0]["embedding"]
                    assert len(vector) == 640, "one pooled vector per text"
                    return 1

                return lambda: concurrent(n, calls, one)

            for n in callers:
                figures = alternate({"ours": load(ours, n), "peer": load(peer, n)}, rounds)
                ratio = figures["ours"]["items_per_s"] / figures["peer"]["items_per_s"]
                rows.append({"callers": n, **figures, "ratio": round(ratio, 2)})
    return rows
