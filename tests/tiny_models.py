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
    rank_head: bool = True,
    vocab: list[str] | None = None,
) -> Path:
    """A bert-style cross-encoder: RANK pooling, ``cls`` + ``cls.output`` head.
    With ``rank_head=False``: a plain bert embedding model with mean pooling.
    ``vocab`` replaces ``bert_vocab()`` (its first five must be the special tokens).

    ``duplicate_token`` writes one token twice, which makes llama.cpp abort at load
    (SIGABRT): a real crash for crash-loop tests.
    """
    import gguf

    rng = np.random.default_rng(seed)
    vocab = list(vocab) if vocab is not None else bert_vocab()
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
    if rank_head:
        writer.add_pooling_type(gguf.PoolingType.RANK)
        writer.add_classifier_output_labels(["relevant"])
    else:
        writer.add_pooling_type(gguf.PoolingType.MEAN)
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
    if rank_head:
        tensor("cls.weight", n_embd, n_embd)
        zeros("cls.bias", n_embd)
        tensor("cls.output.weight", 1, n_embd, scale=1.0)
        zeros("cls.output.bias", 1)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_projector(
    path: Path,
    *,
    text_embd: int = 640,
    n_embd: int = 32,
    n_head: int = 2,
    n_layer: int = 2,
    n_ff: int = 64,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 64,
    seed: int = 99,
) -> Path:
    """A llava-style (``mlp`` projector) CLIP vision tower whose output matches a
    language model of embedding size ``text_embd`` (640: gemma 3 270M)."""
    import gguf

    rng = np.random.default_rng(seed)
    n_pos = (image_size // patch_size) ** 2
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name("lilbee-tiny-projector")
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_text_encoder", False)
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", image_size)
    writer.add_uint32("clip.vision.patch_size", patch_size)
    writer.add_uint32("clip.vision.embedding_length", n_embd)
    writer.add_uint32("clip.vision.feed_forward_length", n_ff)
    writer.add_uint32("clip.vision.block_count", n_layer)
    writer.add_uint32("clip.vision.projection_dim", text_embd)
    writer.add_uint32("clip.vision.attention.head_count", n_head)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    def tensor(name: str, *shape: int, scale: float = 0.05) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def const(name: str, size: int, value: float) -> None:
        writer.add_tensor(name, np.full(size, value, dtype=np.float32))

    tensor("v.patch_embd.weight", n_embd, 3, patch_size, patch_size)
    const("v.patch_embd.bias", n_embd, 0.0)
    tensor("v.position_embd.weight", n_pos, n_embd)
    for i in range(n_layer):
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensor(f"v.blk.{i}.{part}.weight", n_embd, n_embd)
            const(f"v.blk.{i}.{part}.bias", n_embd, 0.0)
        for norm in ("ln1", "ln2"):
            const(f"v.blk.{i}.{norm}.weight", n_embd, 1.0)
            const(f"v.blk.{i}.{norm}.bias", n_embd, 0.0)
        tensor(f"v.blk.{i}.ffn_up.weight", n_ff, n_embd)
        const(f"v.blk.{i}.ffn_up.bias", n_ff, 0.0)
        tensor(f"v.blk.{i}.ffn_down.weight", n_embd, n_ff)
        const(f"v.blk.{i}.ffn_down.bias", n_embd, 0.0)
    tensor("mm.0.weight", hidden, n_embd)
    const("mm.0.bias", hidden, 0.0)
    tensor("mm.2.weight", text_embd, hidden, scale=0.01)
    const("mm.2.bias", text_embd, 0.0)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def png_bytes(width: int = 48, height: int = 40, seed: int = 3) -> bytes:
    """A small real PNG (random pixels), made with Pillow."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
