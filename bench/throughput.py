"""Throughput under concurrency and recovery, side by side in one run (issue 11).

* embed, 1/4/16/64 concurrent callers, one short text per call, coalescing on vs off
  (two supervisors on the same model, measured in alternating blocks): texts/s, p50, p99;
* the same at 16 callers through the daemon's socket (``Client``), on vs off;
* recovery: idle SIGKILL -> ready again, and SIGKILL mid-call -> that call's answer,
  without and with a hot standby;
* no-op round trip through the supervisor vs a raw ``Pipe.send_bytes`` ping-pong.

Every figure is a ratio or a pair measured in the same run; machines here are noisy.
Run: ``python bench/throughput.py [--calls 6] [--rounds 2] [--json bench/throughput.json]``
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from overhead import noop_ratios

from lilbee_workers import Client, RoleConfig, Supervisor, SupervisorConfig
from lilbee_workers.api import WorkerAPI
from lilbee_workers.models import default_model_path

TEXT = "worker bees gather nectar from the flowers near hive {}"


def embed_load(api: WorkerAPI, callers: int, calls: int) -> dict[str, float]:
    """``callers`` threads, each embedding one short text ``calls`` times."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        start.wait()
        for call in range(calls):
            began = time.perf_counter()
            api.embed([TEXT.format(index * 1000 + call)])
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
        "texts_per_s": callers * calls / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def compare(on: WorkerAPI, off: WorkerAPI, callers: int, calls: int, rounds: int) -> dict[str, Any]:
    """On vs off in alternating blocks; medians of each, and the throughput ratio."""
    results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for _ in range(rounds):
        results["on"].append(embed_load(on, callers, calls))
        results["off"].append(embed_load(off, callers, calls))
    row: dict[str, Any] = {"callers": callers}
    for key in ("on", "off"):
        for metric in ("texts_per_s", "p50_ms", "p99_ms"):
            row[f"{key}_{metric}"] = round(statistics.median(r[metric] for r in results[key]), 1)
    row["ratio"] = round(row["on_texts_per_s"] / row["off_texts_per_s"], 2)
    return row


def role(model: str, **settings: Any) -> RoleConfig:
    return RoleConfig(model=model, n_ctx=512, **settings)


@contextmanager
def daemon(config: SupervisorConfig, name: str) -> Iterator[Client]:
    from daemon_helpers import DaemonProcess, write_config

    roles = {
        r: {"model": c.model, "n_ctx": c.n_ctx, "coalesce": c.coalesce}
        for r, c in config.roles.items()
    }
    path = write_config(Path(tempfile.mkdtemp()) / f"{name}.toml", roles, log_dir=config.log_dir)
    process = DaemonProcess(path)
    try:
        client = process.wait_ready()
        client.close()
        with Client(process.socket, pool_size=64) as pooled:
            yield pooled
    finally:
        process.stop()


def recovery(model: str, standby: bool) -> dict[str, float]:
    """Seconds from SIGKILL of an idle worker to ready, and from SIGKILL 50 ms into a
    call to that call's answer (medians of 3)."""
    config = SupervisorConfig(
        roles={"embed": role(model, standby=standby)} if standby else {"embed": role(model)},
        log_dir=tempfile.mkdtemp(),
    )
    idle, mid = [], []
    with Supervisor(config) as sup:
        sup.embed(["warm"])
        for _ in range(3):
            pid = sup.worker_pid("embed")
            assert pid is not None
            began = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while sup.worker_pid("embed") in (None, pid) or sup.status()[0].state != "ready":
                time.sleep(0.002)
            idle.append(time.perf_counter() - began)
            time.sleep(1.0 if not standby else 2.0)  # let a new standby load
            pid = sup.worker_pid("embed")
            assert pid is not None
            killer = threading.Timer(0.05, os.kill, args=(pid, signal.SIGKILL))
            texts = [TEXT.format(i) for i in range(64)]
            began = time.perf_counter()
            killer.start()
            sup.embed(texts)
            mid.append(time.perf_counter() - began)
            time.sleep(1.0 if not standby else 2.0)
    return {
        "idle_kill_to_ready_s": statistics.median(idle),
        "mid_call_kill_to_answer_s": statistics.median(mid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=6, help="calls per caller")
    parser.add_argument("--rounds", type=int, default=2, help="alternating blocks")
    parser.add_argument("--callers", default="1,4,16,64")
    parser.add_argument("--json", default="")
    parser.add_argument("--skip-daemon", action="store_true")
    parser.add_argument("--skip-recovery", action="store_true")
    args = parser.parse_args()
    model = default_model_path()
    report: dict[str, Any] = {"model": os.path.basename(model), "calls_per_caller": args.calls}

    on_config = SupervisorConfig(roles={"embed": role(model)}, log_dir=tempfile.mkdtemp())
    off_config = SupervisorConfig(
        roles={"embed": role(model, coalesce=False)}, log_dir=tempfile.mkdtemp()
    )
    with (
        Supervisor(on_config, queue_wait_s=60) as on,
        Supervisor(off_config, queue_wait_s=60) as off,
    ):
        on.embed(["warm"]), off.embed(["warm"])
        report["in_process"] = [
            compare(on, off, int(n), args.calls, args.rounds) for n in args.callers.split(",")
        ]
        sup_us, raw_us, ratio = noop_ratios(on, 2000, rounds=6)
        report["noop"] = {
            "supervisor_us": round(sup_us * 1e6, 1),
            "raw_pipe_us": round(raw_us * 1e6, 1),
            "ratio": round(ratio, 2),
        }
    if not args.skip_daemon:
        with daemon(on_config, "on") as on_client, daemon(off_config, "off") as off_client:
            on_client.embed(["warm"]), off_client.embed(["warm"])
            report["daemon"] = compare(on_client, off_client, 16, args.calls, args.rounds)
    if not args.skip_recovery:
        report["recovery"] = {
            "plain": recovery(model, standby=False),
            "standby": recovery(model, standby=True),
        }
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def print_table(report: dict[str, Any]) -> None:
    print(f"{'where':<10} {'callers':>7} {'on t/s':>8} {'off t/s':>8} {'ratio':>6} "
          f"{'on p50':>7} {'off p50':>8} {'on p99':>7} {'off p99':>8}")  # fmt: skip
    rows = [("in-proc", r) for r in report["in_process"]]
    if "daemon" in report:
        rows.append(("daemon", report["daemon"]))
    for where, r in rows:
        print(
            f"{where:<10} {r['callers']:>7} {r['on_texts_per_s']:>8} {r['off_texts_per_s']:>8} "
            f"{r['ratio']:>6} {r['on_p50_ms']:>7} {r['off_p50_ms']:>8} {r['on_p99_ms']:>7} "
            f"{r['off_p99_ms']:>8}"
        )
    noop = report["noop"]
    print(f"no-op round trip: supervisor {noop['supervisor_us']} us vs raw pipe "
          f"{noop['raw_pipe_us']} us = {noop['ratio']}x")  # fmt: skip
    for name, figures in report.get("recovery", {}).items():
        print(f"recovery ({name}): " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
