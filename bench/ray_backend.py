"""What the Ray backend costs, side by side with local workers in one run (issue 14).

A throwaway two-node Ray cluster on 127.0.0.2 (tests/ray_cluster.py: all traffic on the
loopback device), and two supervisors on the same model: ``backend = "local"`` and
``backend = "ray"``, measured in alternating blocks so machine noise hits both alike.

* no-op round trip through the role (codec, dispatcher, worker or actor): p50, ratio;
* embed, one short text per call, 1 and 16 concurrent callers: texts/s, p50, ratio;
* chat: time to the first chunk and the whole 32-token answer, ratio;
* recovery: SIGKILL of an idle worker or actor -> ready again; SIGKILL mid-call -> that
  call's answer (a Ray actor needs a Ray worker process started and the model loaded).

Run: ``python bench/ray_backend.py [--rounds 3] [--json bench/ray_backend.json]``
(needs ``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from peers import concurrent
from ray_cluster import start_cluster

from lilbee_workers import RoleConfig, Supervisor, SupervisorConfig, testing
from lilbee_workers.models import default_model_path

TEXT = "worker bees gather nectar from the flowers near hive {}"
BACKENDS = ("local", "ray")


def config(backend: str, model: str, address: str) -> SupervisorConfig:
    roles = {
        role: RoleConfig(model=model, n_ctx=512, max_restarts=1000, restart_backoff_s=0.0)
        for role in ("embed", "chat")
    }
    top: dict[str, Any] = {"backend": backend, "ray_address": address} if backend == "ray" else {}
    return SupervisorConfig(roles=roles, log_dir=tempfile.mkdtemp(), **top)


def noop_p50_us(sup: Supervisor, calls: int) -> float:
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        testing.noop(sup, "embed")
        times.append(time.perf_counter() - began)
    return 1e6 * statistics.median(times)


def embed_rate(sup: Supervisor, callers: int, calls: int) -> dict[str, float]:
    def one(index: int, call: int) -> int:
        sup.embed([TEXT.format(index * 1000 + call)])
        return 1

    return concurrent(callers, calls, one)


def chat_times(sup: Supervisor) -> dict[str, float]:
    began = time.perf_counter()
    stream = sup.complete("Honey is made by", max_tokens=32, temperature=0.0)
    first = 0.0
    for _ in stream:
        first = first or time.perf_counter() - began
    return {"first_chunk_ms": 1000 * first, "answer_ms": 1000 * (time.perf_counter() - began)}


def recovery(sup: Supervisor) -> dict[str, float]:
    """Idle SIGKILL -> ready; then SIGKILL 50 ms into an 8-text embed -> its answer."""
    pid = sup.worker_pid("embed")
    assert pid is not None
    began = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    while sup.worker_pid("embed") in (None, pid) or sup.role_status("embed").state != "ready":
        time.sleep(0.002)
    idle = time.perf_counter() - began
    time.sleep(0.5)
    pid = sup.worker_pid("embed")
    assert pid is not None
    killer = threading.Timer(0.05, os.kill, args=(pid, signal.SIGKILL))
    began = time.perf_counter()
    killer.start()
    sup.embed([TEXT.format(i) for i in range(8)])
    mid = time.perf_counter() - began
    while sup.role_status("embed").state != "ready":
        time.sleep(0.01)
    return {"idle_kill_to_ready_s": idle, "mid_call_kill_to_answer_s": mid}


def measure(sups: dict[str, Supervisor], rounds: int, calls: int) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {b: {} for b in BACKENDS}

    def add(backend: str, figures: dict[str, float], prefix: str = "") -> None:
        for key, value in figures.items():
            samples[backend].setdefault(prefix + key, []).append(value)

    for _ in range(rounds):
        for backend in BACKENDS:
            sup = sups[backend]
            add(backend, {"noop_p50_us": noop_p50_us(sup, 20 * calls)})
            for callers in (1, 16):
                figures = embed_rate(sup, callers, calls)
                add(backend, {"texts_per_s": figures["items_per_s"], "p50_ms": figures["p50_ms"]},
                    f"embed{callers}_")  # fmt: skip
            add(backend, chat_times(sup), "chat_")
    for backend in BACKENDS:  # last: the restarts would disturb the rest
        for _ in range(rounds):
            add(backend, recovery(sups[backend]))
    return {
        backend: {key: round(statistics.median(values), 3) for key, values in metrics.items()}
        for backend, metrics in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10, help="embed calls per caller")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    model = default_model_path()
    cluster = start_cluster()
    try:
        with (
            Supervisor(config("local", model, cluster.address)) as local,
            Supervisor(config("ray", model, cluster.address)) as on_ray,
        ):
            report = measure({"local": local, "ray": on_ray}, args.rounds, args.calls)
    finally:
        cluster.stop()
    print(f"{'figure':34} {'local':>10} {'ray':>10} {'ray/local':>10}")
    for key in report["local"]:
        a, b = report["local"][key], report["ray"][key]
        print(f"{key:34} {a:10.3f} {b:10.3f} {b / a if a else float('nan'):10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
