"""Read a GGUF file's metadata (the key/value header), without loading tensors.

Enough for ``doctor`` to tell what a model file is: its architecture, pooling type,
chat template, or CLIP projector keys. Layout (little-endian, GGUF v2/v3): magic
``GGUF``, u32 version, u64 tensor count, u64 key/value count, then per pair a string key
(u64 length + UTF-8), a u32 value type and the value. Arrays are kept as their length,
and short number arrays (per-layer head counts) also as their values."""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

MAGIC = b"GGUF"
STRING, ARRAY = 8, 9
_SCALARS: dict[int, struct.Struct] = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
KEPT_ARRAY_ITEMS = 1024
"""Number arrays up to this long keep their values (a model's per-layer figures);
longer ones (token scores and types) only their length."""
MetadataValue = int | float | bool | str


class GGUFError(ValueError):
    """The file is not a GGUF file this reader (and llama.cpp) can read."""


@dataclass
class GGUFArray:
    """An array value: its element type and length, and its items when it is a short
    array of numbers (None otherwise)."""

    item_type: int
    length: int
    values: list[int | float | bool] | None = None


@dataclass
class GGUFInfo:
    """A GGUF file's version, tensor count and metadata (arrays as ``GGUFArray``)."""

    version: int
    tensor_count: int
    metadata: dict[str, MetadataValue | GGUFArray] = field(default_factory=dict)

    def get(self, key: str) -> MetadataValue | GGUFArray | None:
        return self.metadata.get(key)

    @property
    def architecture(self) -> str:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else ""


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the GGUF magic bytes."""
    with open(path, "rb") as handle:
        return handle.read(4) == MAGIC


def read_metadata(path: str | os.PathLike[str]) -> GGUFInfo:
    """The file's header and metadata; ``GGUFError`` when it is not a readable GGUF."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < 4 or handle.read(4) != MAGIC:
            raise GGUFError(f"{os.fspath(path)} is not a GGUF file (no GGUF magic bytes)")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _Reader(data, os.fspath(path)).header()


class _Reader:
    def __init__(self, data: mmap.mmap, path: str) -> None:
        self.data = data
        self.path = path
        self.pos = 4

    def header(self) -> GGUFInfo:
        version = self._unpack(_U32)
        if version == 1:
            raise GGUFError(f"{self.path} is GGUF version 1, which llama.cpp no longer reads")
        if version not in (2, 3):
            raise GGUFError(f"{self.path}: unknown GGUF version {version} (big-endian file?)")
        info = GGUFInfo(version=version, tensor_count=self._unpack(_U64))
        for _ in range(self._unpack(_U64)):
            key = self._string()
            info.metadata[key] = self._value(self._unpack(_U32))
        return info

    def _unpack(self, layout: struct.Struct) -> int:
        if self.pos + layout.size > len(self.data):
            raise GGUFError(f"{self.path} is truncated (its metadata ends early)")
        (value,) = layout.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return int(value)

    def _string(self) -> str:
        length = self._unpack(_U64)
        end = self.pos + length
        if end > len(self.data):
            raise GGUFError(f"{self.path} is truncated (its metadata ends early)")
        text = bytes(self.data[self.pos : end]).decode("utf-8", "replace")
        self.pos = end
        return text

    def _value(self, kind: int) -> MetadataValue | GGUFArray:
        if kind == STRING:
            return self._string()
        if kind == ARRAY:
            item_type, length = self._unpack(_U32), self._unpack(_U64)
            start = self.pos
            self._skip_array(item_type, length)
            if item_type == STRING or length > KEPT_ARRAY_ITEMS:
                return GGUFArray(item_type, length)
            item = _SCALARS[item_type]
            values = [item.unpack_from(self.data, start + i * item.size)[0] for i in range(length)]
            return GGUFArray(item_type, length, values)
        layout = _SCALARS.get(kind)
        if layout is None:
            raise GGUFError(f"{self.path}: unknown metadata value type {kind}")
        if self.pos + layout.size > len(self.data):
            raise GGUFError(f"{self.path} is truncated (its metadata ends early)")
        (value,) = layout.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return value  # type: ignore[no-any-return]

    def _skip_array(self, item_type: int, length: int) -> None:
        if item_type == STRING:
            for _ in range(length):
                size = self._unpack(_U64)  # (not `pos += _unpack()`: that drops the 8 bytes)
                self.pos += size
        elif item_type in _SCALARS:
            self.pos += _SCALARS[item_type].size * length
        else:
            raise GGUFError(f"{self.path}: unknown array item type {item_type}")
        if self.pos > len(self.data):
            raise GGUFError(f"{self.path} is truncated (its metadata ends early)")
