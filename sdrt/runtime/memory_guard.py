"""Running out of memory inside an engine is one line naming the call's size, never a traceback.

ONNX Runtime reports a failed allocation as its own RuntimeException ("Failed to allocate memory
for requested buffer of size N"), CUDA and TensorRT as "out of memory" / "cudaErrorMemoryAllocation";
numpy raises MemoryError. `allocation_failure` turns any of these into an SdrtError that says what
was asked (size, UNet batch) and what to try (a smaller size, `--batch-size`).

Before a call, `check_fits` estimates the one buffer that dominates at large sizes -- the
attention scores -- and refuses a call that cannot fit in the memory available now, naming the
size, the estimate and the largest square size that would fit. The estimate is per backend:
`ATTENTION_BYTES[backend]` (ORT CPU's Attention op materializes [B * heads, hw, hw] float32 scores:
64 GiB for `tiny` at 512x512 without guidance). A backend with memory-efficient attention registers
its own function (or none: then no estimate, only the one-line allocation failure). The rest of the
call (weights, activations) is not estimated, so a call that passes can still fail; it then fails
in one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

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


def _attention_levels(unet_config: dict[str, Any]) -> list[tuple[int, int]]:
    """(downsampling factor, heads) of each UNet resolution that has attention (diffusers' config keys;
    `attention_head_dim` is the head count in SD 1.x/2.x configs, per block when a list)."""
    blocks = unet_config.get("down_block_types") or []
    heads = unet_config.get("num_attention_heads") or unet_config.get("attention_head_dim") or 8
    levels = []
    for i, block in enumerate(blocks):
        if "Attn" in block:
            levels.append((2 ** i, int(heads[i] if isinstance(heads, (list, tuple)) else heads)))
    return levels


def unfused_attention_bytes(unet_config: dict[str, Any], batch: int, h: int, w: int) -> int:
    """Peak bytes of one materialized float32 score tensor [B * heads, hw, hw] over the UNet's levels."""
    peak = 0
    for factor, heads in _attention_levels(unet_config):
        tokens = (-(-h // factor)) * (-(-w // factor))
        peak = max(peak, batch * heads * tokens * tokens * 4)
    return peak


#: backend -> estimate of its attention's peak buffer (bytes), or absent: no estimate
ATTENTION_BYTES: dict[str, Callable[[dict, int, int, int], int]] = {"ort-cpu": unfused_attention_bytes}


def available_bytes() -> Optional[int]:
    """Memory the kernel says can be allocated now (MemAvailable), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def unet_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def check_fits(backend: str, config: dict[str, Any], batch: int, height: int, width: int, f: int,
               images: int, available: Optional[int] = None) -> None:
    """Refuse (one line) a call whose attention buffer alone exceeds the memory available."""
    estimate = ATTENTION_BYTES.get(backend)
    if estimate is None or not config:
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
