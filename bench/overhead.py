"""Overhead of the supervisor, measured side by side in one run.

1. Embed throughput (texts/s): through ``Supervisor.embed`` vs llama-cpp-python called
   directly in this process, same model, same settings, same batches. Rounds alternate
   between the two so machine noise hits both alike.
2. Round trip of a no-op frame through a worker's data pipe (``Supervisor.noop``: codec,
   dispatcher, worker loop) vs a raw ``Pipe.send_bytes`` ping-pong with a spawned echo
   process, in alternating blocks; the ratio is the median of the per-block ratios.

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
from collections.abc import Callable
from multiprocessing.connection import Connection

from lilbee_workers import testing
from lilbee_workers.supervisor import Supervisor


def echo(conn: Connection) -> None:
    while True:
        try:
            conn.send_bytes(conn.recv_bytes())
        except EOFError:
            return


class RawPipe:
    """A spawned echo process at the far end of a plain ``Pipe``: the baseline."""

    payload = b"\x82\xa1k\xa4noop\xa2id\x01"  # the size of a no-op frame

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=echo, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def ping(self) -> None:
        self.conn.send_bytes(self.payload)
        self.conn.recv_bytes()

    def close(self) -> None:
        self.conn.close()
        self.proc.join(5)


def median_round_trip(ping: Callable[[], None], count: int) -> float:
    """Median seconds of ``count`` calls of ``ping``."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        ping()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def noop_ratios(sup: Supervisor, pings: int, rounds: int) -> tuple[float, float, float]:
    """Median no-op round trip through the supervisor and through a raw pipe, in
    alternating blocks so machine noise hits both alike; and the median of the
    per-block ratios."""
    raw = RawPipe()
    try:
        for _ in range(300):  # warm both paths
            raw.ping()
            testing.noop(sup, "embed")
        block = max(1, pings // rounds)
        raws, sups, ratios = [], [], []
        for _ in range(rounds):
            raw_s = median_round_trip(raw.ping, block)
            sup_s = median_round_trip(lambda: testing.noop(sup, "embed"), block)
            raws.append(raw_s)
            sups.append(sup_s)
            ratios.append(sup_s / raw_s)
    finally:
        raw.close()
    return statistics.median(sups), statistics.median(raws), statistics.median(ratios)


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
        noop, raw, noop_ratio = noop_ratios(sup, args.pings, rounds=10)

    embed_ratio = statistics.median(supervisor_rates) / statistics.median(direct_rates)
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
