"""Tiny GGUF models written with the ``gguf`` package, for plumbing tests.

Random weights: they prove data flows through llama.cpp's real code paths (BERT with
RANK pooling and a classification head), not that answers are wise.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "bee",
    "bees",
    "honey",
    "hive",
    "flower",
    "flowers",
    "nectar",
    "queen",
    "worker",
    "rust",
    "python",
    "code",
    "cat",
    "dog",
    "sun",
    "rain",
    "sweet",
    "make",
    "makes",
    "gather",
    "what",
    "who",
    "where",
    "how",
]


def bert_vocab() -> list[str]:
    """WordPiece vocabulary in llama.cpp's phantom-space form: whole words carry a
    leading U+2581, continuation pieces none."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list(string.ascii_lowercase + string.digits + ".,?!'")
    words = ["\u2581" + w for w in WORDS]
    return list(dict.fromkeys(specials + words + ["\u2581" + c for c in letters] + letters))


def write_tiny_reranker(
    path: Path,
    *,
    n_embd: int = 32,
    n_head: int = 2,
    n_layer: int = 2,
    n_ff: int = 64,
    n_ctx: int = 256,
    seed: int = 1234,
    duplicate_token: bool = False,
) -> Path:
    """A bert-style cross-encoder: RANK pooling, ``cls`` + ``cls.output`` head.

    ``duplicate_token`` writes one token twice, which makes llama.cpp abort at load
    (SIGABRT): a real crash for crash-loop tests.
    """
    import gguf

    rng = np.random.default_rng(seed)
    vocab = bert_vocab()
    if duplicate_token:
        vocab = [*vocab, vocab[10]]
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name("lilbee-tiny-reranker")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_block_count(n_layer)
    writer.add_head_count(n_head)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_classifier_output_labels(["relevant"])
    writer.add_tokenizer_model("bert")
    writer.add_token_list(vocab)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t.startswith("[") else gguf.TokenType.NORMAL for t in vocab]
    )
    writer.add_token_type_count(2)
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(1)
    writer.add_sep_token_id(3)
    writer.add_mask_token_id(4)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(3)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)

    def tensor(name: str, *shape: int, scale: float = 0.2) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def ones(name: str, size: int) -> None:
        writer.add_tensor(name, np.ones(size, dtype=np.float32))

    def zeros(name: str, size: int) -> None:
        writer.add_tensor(name, np.zeros(size, dtype=np.float32))

    # numpy shapes are (rows, cols) = ggml's {cols, rows}: a weight {n_in, n_out} is (n_out, n_in)
    tensor("token_embd.weight", len(vocab), n_embd)
    tensor("token_types.weight", 2, n_embd)
    tensor("position_embd.weight", n_ctx, n_embd)
    ones("token_embd_norm.weight", n_embd)
    zeros("token_embd_norm.bias", n_embd)
    for i in range(n_layer):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{part}.weight", n_embd, n_embd)
            zeros(f"blk.{i}.{part}.bias", n_embd)
        ones(f"blk.{i}.attn_output_norm.weight", n_embd)
        zeros(f"blk.{i}.attn_output_norm.bias", n_embd)
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        zeros(f"blk.{i}.ffn_up.bias", n_ff)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
        zeros(f"blk.{i}.ffn_down.bias", n_embd)
        ones(f"blk.{i}.layer_output_norm.weight", n_embd)
        zeros(f"blk.{i}.layer_output_norm.bias", n_embd)
    tensor("cls.weight", n_embd, n_embd)
    zeros("cls.bias", n_embd)
    tensor("cls.output.weight", 1, n_embd, scale=1.0)
    zeros("cls.output.bias", 1)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
