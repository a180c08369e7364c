"""Where merged LoRA weights live: a memory-mapped scratch file, not the process's anonymous memory.

A LoRA on every attention and feed-forward layer of SDXL's UNet changes ~8 GB of float32 weights.
ONNX Runtime copies the values it is given as initializers (measured with ONNX Runtime 1.31: a
session's output did not change when the arrays it was given were zeroed afterwards, and its
anonymous memory rose by the arrays' size again), so merged arrays held in ordinary memory make
two copies of the changed layers, which on a 24 GB machine is what ran out. Merged into pages of a
file instead, the merge's own copy is page cache: the kernel can write it back and drop it under
pressure, and only the engine's copy stays resident.

The file is created and unlinked at once (nothing is left behind, even after SIGKILL), its blocks
reserved with `posix_fallocate` before a byte is written (a full disk is one line *before* any
engine is touched, never a SIGBUS in the middle of a merge), then mapped; `array` hands out
page-aligned numpy views. It lives in, by preference, `$SDRT_LORA_SCRATCH`, the model folder's
`engines/` (same disk as the model, never a RAM-backed /tmp), then the system's temp folder; where
none is writable the store is anonymous memory, as before, and says so once on stderr.
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from sdrt import atomic
from sdrt.errors import SdrtError
from sdrt.manifest import engines_dir

PAGE = mmap.PAGESIZE
ENV = "SDRT_LORA_SCRATCH"
_said = False  # the in-memory fallback is reported once per process


def _aligned(nbytes: int) -> int:
    return -(-int(nbytes) // PAGE) * PAGE


def size_for(arrays: Iterable[tuple[tuple[int, ...], np.dtype]]) -> int:
    """Bytes a store needs for arrays of these (shape, dtype), each starting on a page."""
    return sum(_aligned(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize) for shape, dtype in arrays)


def candidates(model_folder: Path | None) -> list[Path]:
    folders = []
    if os.environ.get(ENV):
        folders.append(Path(os.environ[ENV]).expanduser())
    if model_folder is not None:
        folders.append(engines_dir(model_folder))
    folders.append(Path(tempfile.gettempdir()))
    return folders


class ScratchStore:
    """`nbytes` of file-backed memory handed out as page-aligned numpy arrays."""

    def __init__(self, nbytes: int, model_folder: Path | None = None, *, what: str = "LoRA weights"):
        self.nbytes = max(int(nbytes), PAGE)
        self.offset = 0
        self.where: Path | None = None
        self._map = self._file_map(candidates(model_folder), what)

    def _file_map(self, folders: list[Path], what: str) -> mmap.mmap:
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, path = tempfile.mkstemp(prefix=".lora-scratch-", dir=folder)  # private, unlinked at once
            except OSError:
                continue  # not writable: the next place
            try:
                os.unlink(path)  # gone from the folder now; the blocks live as long as the mapping
                try:
                    os.posix_fallocate(fd, 0, self.nbytes)
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise SdrtError(f"no space for the merged {what}: {self.nbytes / 2**20:,.0f} MiB needed in "
                                        f"{folder}, {atomic.free_space(folder)} free: free some space or set "
                                        f"{ENV} to a folder on a larger disk") from None
                    os.ftruncate(fd, self.nbytes)  # a file system without fallocate
                self.where = folder
                # MAP_POPULATE maps every page now, in one go: writing the merge into unmapped file pages
                # faulted one 4 KiB page at a time (measured: 1 GiB in 2.7 s; populated, 0.3 + 0.25 s)
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                return mmap.mmap(fd, self.nbytes, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
        global _said
        if not _said:
            _said = True
            print(f"sdrt: no writable folder for a LoRA scratch file ({', '.join(map(str, folders))}): the merged "
                  f"{what} are held in memory", file=sys.stderr)
        return mmap.mmap(-1, self.nbytes)

    def array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A new writable array in the store (contents unspecified)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        size = count * dtype.itemsize
        if self.offset + size > self.nbytes:
            raise ValueError(f"scratch store full: {size} bytes asked, {self.nbytes - self.offset} left")
        view = np.frombuffer(self._map, dtype=dtype, count=count, offset=self.offset).reshape(shape)
        self.offset += _aligned(size)
        return view


def store_for(shapes: Mapping[str, tuple[tuple[int, ...], np.dtype]], model_folder: Path | None) -> ScratchStore:
    """One store sized for {name: (shape, dtype)}."""
    return ScratchStore(size_for(shapes.values()), model_folder)
