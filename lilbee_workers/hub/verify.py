"""Check a downloaded file against what the hub advertised for it. huggingface_hub does
not (a truncated or altered copy lands in its cache as if whole), so every pulled file is
hashed here, and a file that fails is removed from the cache before the error is raised:
nothing unverified is left for ``serve`` to find."""

from __future__ import annotations

import hashlib
import os
import struct

from lilbee_workers.gguf_info import MAGIC
from lilbee_workers.hub.names import HubError

_CHUNK = 4 * 2**20


def file_digest(path: str, algorithm: str, git_size: int | None = None) -> str:
    """The file's hex digest; with ``git_size``, git's blob id (sha1 over a header and
    the bytes), which is what the hub lists for a small file not stored in LFS."""
    digest = hashlib.new(algorithm)
    if git_size is not None:
        digest.update(f"blob {git_size}\0".encode())
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def gguf_problem(path: str) -> str:
    """Why the file is not a GGUF llama.cpp reads (magic, version), ``""`` when it is."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8 or head[:4] != MAGIC:
        return "it is not a GGUF file (no GGUF magic bytes)"
    (version,) = struct.unpack("<I", head[4:])
    return "" if version in (2, 3) else f"it is GGUF version {version}, not 2 or 3"


def remove_cached(path: str) -> None:
    """Remove a file from the cache: the snapshot's link and the blob it points to."""
    blob = os.path.realpath(path)
    for victim in {path, blob}:
        try:
            os.unlink(victim)
        except FileNotFoundError:
            pass


def verify(path: str, name: str, sha256: str | None, git_oid: str, size: int) -> str:
    """The file's sha256 when its bytes are what the hub advertised and it is a GGUF;
    otherwise the file is removed and ``HubError`` names both hashes (or the problem)."""
    try:
        actual = file_digest(path, "sha256")
        if sha256 is not None and actual != sha256.lower():
            raise HubError("checksum", f"{name}: downloaded bytes do not match the hub's "
                           f"sha256: expected {sha256.lower()}, got {actual}; removed from "
                           "the cache (pull again; if it repeats, the hub or a proxy is "
                           "serving other bytes)")  # fmt: skip
        if sha256 is None:
            blob_id = file_digest(path, "sha1", git_size=size)
            if blob_id != git_oid.lower():
                raise HubError("checksum", f"{name}: downloaded bytes do not match the "
                               f"hub's git blob id: expected {git_oid}, got {blob_id}; "
                               "removed from the cache")  # fmt: skip
        problem = gguf_problem(path)
        if problem:
            raise HubError("not-gguf", f"{name}: {problem}; removed from the cache")
        return actual
    except HubError:  # a failed check: never leave the bad bytes to be served
        remove_cached(path)
        raise
