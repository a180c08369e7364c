"""Writing into a fresh file mapping: page by page, or with MAP_POPULATE; pwrite; anonymous memory.

    python -m sdrt.bench.probes.scratch_page_fault [--dir DIR] [--size-mb 1024]

The reason sdrt's LoRA scratch file is mapped with MAP_POPULATE (sdrt.runtime.lora.scratch). Each
trial writes --size-mb of float32 data, in 16 chunks, into an unlinked, fallocated file in --dir
(default: the system's temporary folder; put it on the disk the scratch file would use):
(1) a plain shared mapping (the kernel faults every page in on first write), (2) a mapping made with
MAP_POPULATE (pages in at mmap time, then the write), (3) pwrite, then reading the file back through a
read-only mapping (strided and whole), (4) the same write into fresh anonymous memory. Seconds printed.
"""

from __future__ import annotations

import argparse
import mmap
import os
import tempfile
import time

import numpy as np

CHUNKS = 16


def scratch_fd(folder: str | None, size: int) -> int:
    """An open, unlinked file of `size` bytes, reserved on disk."""
    fd, path = tempfile.mkstemp(prefix="sdrt-probe-", dir=folder)
    os.unlink(path)
    os.posix_fallocate(fd, 0, size)
    return fd


def fill(array: np.ndarray, chunk: np.ndarray) -> None:
    for i in range(CHUNKS):
        array[i * len(chunk):(i + 1) * len(chunk)] = chunk


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdrt.bench.probes.scratch_page_fault",
                                description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=None, help="folder for the unlinked files (default: $TMPDIR)")
    p.add_argument("--size-mb", type=int, default=1024, help="bytes written per trial, in MiB (default 1024)")
    args = p.parse_args(argv)
    size = args.size_mb * 2**20 // (CHUNKS * 4) * CHUNKS * 4  # whole float32 chunks
    chunk = np.random.default_rng(0).standard_normal(size // 4 // CHUNKS, dtype=np.float32)

    fd = scratch_fd(args.dir, size)
    mapped = mmap.mmap(fd, size)
    array = np.frombuffer(mapped, np.float32)
    start = time.perf_counter()
    fill(array, chunk)
    print("mmap first write", round(time.perf_counter() - start, 2), flush=True)
    del array
    mapped.close()
    os.close(fd)

    fd = scratch_fd(args.dir, size)
    start = time.perf_counter()
    mapped = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
    populate = time.perf_counter() - start
    array = np.frombuffer(mapped, np.float32)
    start = time.perf_counter()
    fill(array, chunk)
    print("populate", round(populate, 2), "then write", round(time.perf_counter() - start, 2), flush=True)
    del array
    mapped.close()
    os.close(fd)

    fd = scratch_fd(args.dir, size)
    start = time.perf_counter()
    for i in range(CHUNKS):
        os.pwrite(fd, chunk.data, i * chunk.nbytes)
    written = time.perf_counter() - start
    mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    array = np.frombuffer(mapped, np.float32)
    start = time.perf_counter()
    float(array[::1024].sum())
    strided = time.perf_counter() - start
    start = time.perf_counter()
    copy = array.copy()
    whole = time.perf_counter() - start
    print("pwrite", round(written, 2), "mapped read strided", round(strided, 2), "full read", round(whole, 2),
          flush=True)
    del array, copy
    mapped.close()
    os.close(fd)

    start = time.perf_counter()
    anonymous = np.empty(size // 4, np.float32)
    fill(anonymous, chunk)
    print("anon first write", round(time.perf_counter() - start, 2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
