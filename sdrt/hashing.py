"""sha256 of files, read in chunks: the one loop every content hash in sdrt goes through.

- `file_sha256(path, start=0)`: one file's hex digest, from byte `start` on (a safetensors file's
  tensors after its header, for AUTOMATIC1111's LoRA hash);
- `files_sha256(paths)`: one hex digest over several files' bytes in the given order, absent files
  skipped (a component: model.onnx, then its .data when there is one);
- `update_with_file(digest, path)`: feed one file into a running hash (hashes that mix file bytes
  with other text, such as a folder hash over relative paths and bytes).

Chunks are 4 MiB: a multi-GB UNet is hashed without holding it in memory.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

CHUNK = 1 << 22


def update_with_file(digest: Any, path: str | os.PathLike, start: int = 0) -> Any:
    """Feed the bytes of `path` (from offset `start`) into `digest`; returns `digest`."""
    with open(path, "rb") as f:
        if start:
            f.seek(start)
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest


def file_sha256(path: str | os.PathLike, start: int = 0) -> str:
    """Hex sha256 of one file's bytes from offset `start` on."""
    return update_with_file(hashlib.sha256(), path, start).hexdigest()


def files_sha256(paths: Iterable[str | os.PathLike]) -> str:
    """Hex sha256 over the files' bytes in order, absent files skipped (no separator between them)."""
    digest = hashlib.sha256()
    for path in paths:
        if os.path.exists(path):
            update_with_file(digest, path)
    return digest.hexdigest()
