"""A tiny llama-architecture GGUF with random weights, for batching measurements on a
second architecture (bench/batched_generation.py). Written in f32 with the ``gguf``
package, then quantized to Q4_K_M by llama.cpp itself, so its matrix products take the
same quantized kernels (and weight repacking) as gemma 3 270M's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tiny_models import WORDS


def write_tiny_llama(
    path: Path, *, n_embd: int = 256, n_layer: int = 2, seed: int = 7, n_head_kv: int = 4
) -> Path:
    """Write ``path`` (Q4_K_M; K-quants need rows of 256). Random weights: it proves code
    paths and numerics, not wisdom. 4 heads; ``n_head_kv`` < 4 shares K/V heads (GQA)."""
    import gguf
    import llama_cpp as L

    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["\u2581" + w for w in WORDS]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(WORDS)
    f32 = path.with_suffix(".f32.gguf")
    writer = gguf.GGUFWriter(str(f32), "llama")
    writer.add_name("lilbee-tiny-llama")
    writer.add_context_length(512)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(2 * n_embd)
    writer.add_block_count(n_layer)
    writer.add_head_count(4)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(n_embd // 4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(WORDS))])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def tensor(name: str, *shape: int) -> None:
        scale = 1.0 / np.sqrt(shape[-1])
        writer.add_tensor(name, (rng.standard_normal(shape) * scale * 2).astype(np.float32))

    tensor("token_embd.weight", len(tokens), n_embd)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    tensor("output.weight", len(tokens), n_embd)
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            rows = n_embd // 4 * n_head_kv if part in ("attn_k", "attn_v") else n_embd
            tensor(f"blk.{i}.{part}.weight", rows, n_embd)
        tensor(f"blk.{i}.ffn_gate.weight", 2 * n_embd, n_embd)
        tensor(f"blk.{i}.ffn_up.weight", 2 * n_embd, n_embd)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, 2 * n_embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    params = L.llama_model_quantize_default_params()
    params.ftype = L.LLAMA_FTYPE_MOSTLY_Q4_K_M
    if L.llama_model_quantize(str(f32).encode(), str(path).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {f32}")
    f32.unlink()
    return path
