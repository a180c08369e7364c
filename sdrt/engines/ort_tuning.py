"""ONNX Runtime CPU speed levers, measured on the SD 1.5 UNet/VAE/CLIP (benchmarks/README.md).

Session-option presets by name; ``backend_options(backend, preset, folder)`` gives the keyword
arguments for ``Pipeline.load(folder, backend, **options)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def physical_cores() -> int:
    """Physical cores (ONNX Runtime's intra-op default); hyper-threads slow GEMMs down."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


#: preset name -> session options for the ort-cpu backend (None: onnxruntime's defaults)
CPU_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
}
DEFAULT_PRESET = "default"


def backend_options(backend: str, preset: str | None, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """Backend keyword arguments for a tuning preset (only ort-cpu has presets)."""
    from sdrt.errors import SdrtError

    if backend != "ort-cpu":
        return {}
    name = preset or DEFAULT_PRESET
    if name not in CPU_PRESETS:
        raise SdrtError(f"unknown ONNX Runtime tuning preset {name!r}; choose one of: {', '.join(CPU_PRESETS)}")
    return dict(CPU_PRESETS[name])
