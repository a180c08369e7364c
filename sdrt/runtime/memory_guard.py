"""Running out of memory inside an engine is one line naming the call's size, never a traceback.

ONNX Runtime reports a failed allocation as its own RuntimeException ("Failed to allocate memory
for requested buffer of size N"), CUDA and TensorRT as "out of memory" / "cudaErrorMemoryAllocation";
numpy raises MemoryError. `allocation_failure` turns any of these into an SdrtError that says what
was asked (size, UNet batch) and what to try (a smaller size, `--batch-size`).

What is not done yet (see README): estimating a call's peak memory from the shapes before running
(ORT CPU's unfused attention materializes [B * heads, hw, hw] float32 scores, 128 GiB for `tiny` at
512x512), so the refusal comes when the allocation fails, not before the call starts.
"""

from __future__ import annotations

import re

from sdrt.errors import SdrtError

_PATTERNS = re.compile(r"failed to allocate|out of memory|bad_alloc|cudaErrorMemoryAllocation|"
                       r"CUDA_ERROR_OUT_OF_MEMORY|std::bad_alloc", re.IGNORECASE)
_SIZE = re.compile(r"buffer of size (\d+)")


def is_allocation_failure(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or bool(_PATTERNS.search(str(error)))


def allocation_failure(error: BaseException, backend: str, height: int | None, width: int | None,
                       images: int) -> SdrtError:
    asked = _SIZE.search(str(error))
    amount = f" (one buffer of {int(asked.group(1)) / 2**30:.1f} GiB)" if asked else ""
    size = f"{width}x{height}" if height and width else "this size"
    return SdrtError(f"out of memory on {backend} generating {images} image(s) at {size}{amount}: "
                     f"use a smaller size, fewer images per call (--batch-size), or a machine with more memory")
