"""The small GGUF metadata reader doctor uses agrees with the `gguf` package, and
refuses what is not a GGUF file with a clear error instead of a crash."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lilbee_workers.gguf_info import GGUFArray, GGUFError, read_metadata
from tiny_models import write_tiny_projector, write_tiny_reranker


def reference(path: Path) -> dict[str, object]:
    """Scalar and string metadata as the `gguf` package reads it."""
    import gguf

    values: dict[str, object] = {}
    for name, field in gguf.GGUFReader(str(path)).fields.items():
        if name.startswith("GGUF."):  # the header, which the package lists as fields
            continue
        if field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
            values[name] = field.contents()
    return values


@pytest.mark.parametrize("make", [write_tiny_reranker, write_tiny_projector])
def test_reader_agrees_with_the_gguf_package(make: object, tmp_path: Path) -> None:
    path = make(tmp_path / "m.gguf")  # type: ignore[operator]
    info = read_metadata(path)
    expected = reference(path)
    ours = {k: v for k, v in info.metadata.items() if not isinstance(v, GGUFArray)}
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value) if isinstance(value, float) else ours[key] == value
    assert info.version == 3


def test_rank_pooling_and_architecture(tmp_path: Path) -> None:
    info = read_metadata(write_tiny_reranker(tmp_path / "r.gguf"))
    assert info.architecture == "bert"
    assert info.get(f"{info.architecture}.pooling_type") == 4
    assert info.get("tokenizer.ggml.tokens") is not None  # arrays are kept as their length


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a GGUF file"),
        (b"PK\x03\x04 a zip", "not a GGUF file"),
        (b"GGUF\x01\x00\x00\x00", "version 1"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + struct.pack("<Q", 4) + b"ke", "truncated"),
        (
            b"GGUF"
            + struct.pack("<IQQ", 3, 0, 1)
            + struct.pack("<Q", 1)
            + b"k"
            + struct.pack("<I", 99),
            "value type 99",
        ),
    ],
)
def test_bad_files_are_clear_errors(content: bytes, match: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=match):
        read_metadata(path)


def test_short_number_arrays_keep_their_values(tmp_path: Path) -> None:
    """Per-layer figures (a hybrid model's K/V heads: 0 where a layer has no attention)
    are read as the `gguf` package reads them; long arrays only as their length."""
    import gguf

    path = tmp_path / "a.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("llama.attention.head_count_kv", [0, 2, 0, 2])
    writer.add_array("llama.big", list(range(5000)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    fields = gguf.GGUFReader(str(path)).fields
    info = read_metadata(path)
    heads = info.get("llama.attention.head_count_kv")
    assert isinstance(heads, GGUFArray)
    assert heads.values == fields["llama.attention.head_count_kv"].contents() == [0, 2, 0, 2]
    big = info.get("llama.big")
    assert isinstance(big, GGUFArray) and big.length == 5000 and big.values is None
