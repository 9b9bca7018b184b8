"""Overhead of the supervisor, measured side by side in one run.

1. Embed throughput (texts/s): through ``Supervisor.embed`` vs llama-cpp-python called
   directly in this process, same model, same settings, same batches. Rounds alternate
   between the two so machine noise hits both alike.
2. Round trip of a no-op frame through a worker's data pipe (``Supervisor.noop``: codec,
   dispatcher queue, worker loop) vs a raw ``Pipe.send_bytes`` ping-pong with a spawned
   echo process.

Run: ``python bench/overhead.py [--rounds 6] [--batch 32] [--pings 5000]``
Targets: embed ratio >= 0.95, no-op ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection


def echo(conn: Connection) -> None:
    while True:
        try:
            conn.send_bytes(conn.recv_bytes())
        except EOFError:
            return


def raw_pipe_round_trip(pings: int) -> float:
    """Median seconds per raw send_bytes ping-pong with a spawned echo process."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=echo, args=(child,), daemon=True)
    proc.start()
    payload = b"\x82\xa1k\xa4noop\xa2id\x01"  # the size of a no-op frame
    for _ in range(200):
        parent.send_bytes(payload)
        parent.recv_bytes()
    samples = []
    for _ in range(pings):
        started = time.perf_counter()
        parent.send_bytes(payload)
        parent.recv_bytes()
        samples.append(time.perf_counter() - started)
    parent.close()
    proc.join(5)
    return statistics.median(samples)


def supervisor_round_trip(sup: object, pings: int) -> float:
    from lilbee_workers.supervisor import Supervisor

    assert isinstance(sup, Supervisor)
    for _ in range(200):
        sup.noop("embed")
    samples = []
    for _ in range(pings):
        started = time.perf_counter()
        sup.noop("embed")
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pings", type=int, default=5000)
    parser.add_argument("--n-ctx", type=int, default=512)
    args = parser.parse_args()

    from llama_cpp import Llama

    from lilbee_workers.config import RoleConfig, SupervisorConfig
    from lilbee_workers.models import default_model_path
    from lilbee_workers.roles.embed import resolve_pooling
    from lilbee_workers.supervisor import Supervisor

    model = default_model_path()
    texts = [
        f"Sentence {i}: worker bees gather nectar from flowers near hive {i}."
        for i in range(args.batch)
    ]
    role = RoleConfig(model=model, n_ctx=args.n_ctx)
    config = SupervisorConfig(roles={"embed": role}, log_dir=tempfile.mkdtemp())
    direct = Llama(
        model_path=model,
        embedding=True,
        n_ctx=args.n_ctx,
        n_batch=args.n_ctx,
        n_ubatch=args.n_ctx,
        n_gpu_layers=0,
        pooling_type=resolve_pooling("auto", model),
        verbose=False,
    )
    direct_rates, supervisor_rates = [], []
    with Supervisor(config) as sup:
        sup.embed(texts)
        direct.embed(texts, normalize=True)
        for _ in range(args.rounds):
            started = time.perf_counter()
            direct.embed(texts, normalize=True)
            direct_rates.append(len(texts) / (time.perf_counter() - started))
            started = time.perf_counter()
            sup.embed(texts)
            supervisor_rates.append(len(texts) / (time.perf_counter() - started))
        noop = supervisor_round_trip(sup, args.pings)
    raw = raw_pipe_round_trip(args.pings)

    embed_ratio = statistics.median(supervisor_rates) / statistics.median(direct_rates)
    noop_ratio = noop / raw
    report = {
        "embed_texts_per_s_direct": round(statistics.median(direct_rates), 2),
        "embed_texts_per_s_supervisor": round(statistics.median(supervisor_rates), 2),
        "embed_throughput_ratio": round(embed_ratio, 3),
        "noop_round_trip_us_raw_pipe": round(raw * 1e6, 1),
        "noop_round_trip_us_supervisor": round(noop * 1e6, 1),
        "noop_round_trip_ratio": round(noop_ratio, 3),
        "rounds": args.rounds,
        "batch": args.batch,
        "pings": args.pings,
    }
    print(json.dumps(report, indent=2))
    print(
        f"embed throughput supervisor/direct = {embed_ratio:.3f} (target >= 0.95); "
        f"no-op round trip supervisor/raw pipe = {noop_ratio:.2f} (target <= 1.5)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
