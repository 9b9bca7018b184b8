"""Throughput under concurrency and recovery, side by side in one run (issue 11).

* embed, 1/4/16/64 concurrent callers, one short text per call, coalescing on vs off
  (two supervisors on the same model, measured in alternating blocks): texts/s, p50, p99;
* the same at 16 callers through the daemon's socket (``Client``), on vs off;
* rank rerank, 16 callers x 8 documents, coalescing on vs off (bench/peers.py);
* recovery: idle SIGKILL -> ready again, and SIGKILL mid-call -> that call's answer (and
  the time it added to the call), plain, with a hot standby, and with 2 replicas;
* the peer: llama-cpp-python's own server vs our HTTP face, concurrent embeds over HTTP
  (needs ``pip install -e '.[bench]'``);
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
from peers import concurrent, peer_rows, replica_recovery, rerank_rows

from lilbee_workers import Client, RoleConfig, Supervisor, SupervisorConfig
from lilbee_workers.api import WorkerAPI
from lilbee_workers.models import default_model_path

TEXT = "worker bees gather nectar from the flowers near hive {}"


def embed_load(api: WorkerAPI, callers: int, calls: int) -> dict[str, float]:
    """``callers`` threads, each embedding one short text ``calls`` times."""

    def one(index: int, call: int) -> int:
        api.embed([TEXT.format(index * 1000 + call)])
        return 1

    figures = concurrent(callers, calls, one)
    return {"texts_per_s": figures.pop("items_per_s"), **figures}


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


def recovery(model: str, standby: bool, repeats: int = 5) -> dict[str, float]:
    """SIGKILL of an idle worker -> ready again; and SIGKILL ``KILL_AFTER_S`` into a
    short call -> its answer, less that call's own time and the time it had run before
    the kill: what the loss cost (the issue's target: <= 150 ms with a standby).
    Medians of ``repeats``."""
    # Every kill counts toward the circuit breaker and the restart backoff: keep both out
    # of the way, so what is measured is the restart itself.
    wide: dict[str, Any] = {"max_restarts": 1000, "restart_backoff_s": 0.0}
    config = SupervisorConfig(
        roles={"embed": role(model, standby=standby, **wide) if standby else role(model, **wide)},
        log_dir=tempfile.mkdtemp(),
    )
    idle, mid, cost = [], [], []
    texts = [TEXT.format(i) for i in range(8)]
    with Supervisor(config) as sup:
        sup.embed(["warm"])
        for _ in range(repeats):
            settle(sup, standby)
            pid = sup.worker_pid("embed")
            assert pid is not None
            began = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while sup.worker_pid("embed") in (None, pid) or sup.status()[0].state != "ready":
                time.sleep(0.002)
            idle.append(time.perf_counter() - began)
            settle(sup, standby)
            began = time.perf_counter()
            sup.embed(texts)
            alone = time.perf_counter() - began
            pid = sup.worker_pid("embed")
            assert pid is not None
            killer = threading.Timer(KILL_AFTER_S, os.kill, args=(pid, signal.SIGKILL))
            began = time.perf_counter()
            killer.start()
            sup.embed(texts)
            answered = time.perf_counter() - began
            mid.append(answered)
            cost.append(answered - alone - KILL_AFTER_S)
    return {
        "idle_kill_to_ready_s": statistics.median(idle),
        "mid_call_kill_to_answer_s": statistics.median(mid),
        "loss_cost_s": statistics.median(cost),
    }


KILL_AFTER_S = 0.05


def settle(sup: Supervisor, standby: bool) -> None:
    """Wait until the role serves again (and, with a standby, has its next spare)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = sup.status()[0]
        if status.state == "ready" and (not standby or status.standby_pid is not None):
            time.sleep(0.5)  # let a load that just finished give the CPU back
            return
        time.sleep(0.05)
    raise RuntimeError("the role did not settle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=6, help="calls per caller")
    parser.add_argument("--rounds", type=int, default=2, help="alternating blocks")
    parser.add_argument("--callers", default="1,4,16,64")
    parser.add_argument("--json", default="")
    parser.add_argument("--skip-daemon", action="store_true")
    parser.add_argument("--skip-recovery", action="store_true")
    parser.add_argument("--skip-rerank", action="store_true")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--peer-callers", default="1,16")
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
    if not args.skip_rerank:
        report["rerank"] = rerank_rows(16, args.calls, args.rounds)
    if not args.skip_recovery:
        report["recovery"] = {
            "plain": recovery(model, standby=False),
            "standby": recovery(model, standby=True),
            "replicas": replica_recovery(model, [TEXT.format(i) for i in range(8)]),
        }
    if not args.skip_peer:
        callers = [int(n) for n in args.peer_callers.split(",")]
        report["peer"] = peer_rows(model, callers, args.calls, args.rounds)
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
    if "rerank" in report:
        r = report["rerank"]
        print(f"rank rerank, {r['callers']} callers x {r['documents']} docs: on "
              f"{r['on']['items_per_s']} docs/s vs off {r['off']['items_per_s']} = "
              f"{r['ratio']['docs_per_s']}x (p50 {r['on']['p50_ms']} vs "
              f"{r['off']['p50_ms']} ms)")  # fmt: skip
    for row in report.get("peer", []):
        print(f"HTTP embeds, {row['callers']} callers: ours {row['ours']['items_per_s']} texts/s "
              f"vs llama_cpp.server {row['peer']['items_per_s']} = {row['ratio']}x "
              f"(p50 {row['ours']['p50_ms']} vs {row['peer']['p50_ms']} ms)")  # fmt: skip
    for name, figures in report.get("recovery", {}).items():
        print(f"recovery ({name}): " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
