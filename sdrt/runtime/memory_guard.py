"""Running out of memory inside an engine is one line naming the call's size, never a traceback.

ONNX Runtime reports a failed allocation as its own RuntimeException ("Failed to allocate memory
for requested buffer of size N"), CUDA and TensorRT as "out of memory" / "cudaErrorMemoryAllocation";
numpy raises MemoryError. `allocation_failure` turns any of these into an SdrtError that says what
was asked (size, UNet batch) and what to try (a smaller size, `--batch-size`).

Before a call, `check_fits` estimates the one buffer that dominates at large sizes -- the
attention scores -- and refuses a call that cannot fit in the memory available now, naming the
size, the estimate and the largest square size that would fit. The estimate is the backend's own
(`Backend.attention_bytes`: ORT CPU's unfused Attention op materializes [B * heads, hw, hw] float32
scores, 64 GiB for `tiny` at 512x512 without guidance; a backend with memory-efficient attention
gives none: then only the one-line allocation failure). The rest of the call (weights, activations)
is not estimated, so a call that passes can still fail; it then fails in one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

from sdrt.errors import SdrtError
from sdrt.system_memory import available_bytes

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


def denoiser_config(component_folder: Path) -> dict[str, Any]:
    """The denoiser's diffusers config.json (what the attention estimate reads); {} when unreadable."""
    try:
        return json.loads((Path(component_folder) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


#: a backend's attention estimate: (denoiser config, batch, latent h, latent w) -> bytes, or None
Estimate = Callable[[dict, int, int, int], Optional[int]]


def check_fits(backend: str, estimate: Estimate | None, config: dict[str, Any], batch: int, height: int,
               width: int, f: int, images: int, available: Optional[int] = None) -> None:
    """Refuse (one line) a call whose attention buffer alone exceeds the memory available."""
    if estimate is None or not config or estimate(config, batch, height // f, width // f) is None:
        return
    available = available_bytes() if available is None else available
    need = estimate(config, batch, height // f, width // f)
    if available is None or need <= available:
        return
    side = height
    while side > f and estimate(config, batch, side // f, side // f) > available:
        side = side * 3 // 4 // f * f
    raise SdrtError(f"{width}x{height} with {images} image(s) (UNet batch {batch}) needs about {need / 2**30:.1f} GiB "
                    f"for {backend}'s attention scores alone, {available / 2**30:.1f} GiB is available: use at most "
                    f"about {side}x{side} at this batch, fewer images per call (--batch-size), or no guidance")
