"""A re-run pull that is interrupted while it hashes a copy verified before keeps it;
a copy whose bytes are wrong is removed."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from lilbee_workers.hub import verify as verify_module
from lilbee_workers.hub.names import HubError


def _gguf(path: Path) -> str:
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\0" * 64)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_interrupted_hash_leaves_the_file_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.gguf"
    sha = _gguf(model)
    assert verify_module.verify(str(model), "model.gguf", sha, "", model.stat().st_size) == sha

    def interrupted(*_args: object, **_kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(verify_module, "file_digest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        verify_module.verify(str(model), "model.gguf", sha, "", model.stat().st_size)
    assert model.exists()  # the copy verified before is still there


def test_wrong_bytes_are_removed_naming_both_hashes(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    actual = _gguf(model)
    with pytest.raises(HubError, match=f"expected {'0' * 64}, got {actual}"):
        verify_module.verify(str(model), "model.gguf", "0" * 64, "", model.stat().st_size)
    assert not model.exists()
