"""Resizing latents [N, C, h, w] in numpy, as PyTorch's `interpolate` does (the hires fix's Latent upscalers).

Each mode is a matrix per axis (output index -> weights over input indices), applied along the height
then the width: `bilinear` and `bicubic` (A = -0.75) with align_corners=False, `nearest`,
`nearest-exact`, and the antialiased forms (a triangle or Keys A = -0.5 filter widened by the scale
when shrinking, weights normalized per output index), matching torch to float rounding.
"""

from __future__ import annotations

import math

import numpy as np

from sdrt.errors import SdrtError

MODES = ("bilinear", "bicubic", "nearest", "nearest-exact")


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _matrix(n_in: int, n_out: int, mode: str, antialias: bool) -> np.ndarray:
    scale = n_in / n_out
    m = np.zeros((n_out, n_in), dtype=np.float64)
    out = np.arange(n_out)
    if mode in ("nearest", "nearest-exact"):
        src = np.floor(out * scale) if mode == "nearest" else np.floor((out + 0.5) * scale)
        m[out, np.minimum(src.astype(int), n_in - 1)] = 1.0
        return m
    if antialias:  # PIL-style: the filter spans more input pixels when shrinking
        support = (1.0 if mode == "bilinear" else 2.0) * max(scale, 1.0)
        stretch = max(scale, 1.0)
        for i in range(n_out):
            center = scale * (i + 0.5)
            lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
            j = np.arange(lo, hi)
            x = (j - center + 0.5) / stretch
            w = np.maximum(0.0, 1.0 - np.abs(x)) if mode == "bilinear" else _cubic(x, -0.5)
            m[i, lo:hi] = w / w.sum()
        return m
    src = (out + 0.5) * scale - 0.5
    if mode == "bilinear":
        src = np.maximum(src, 0.0)
        x0 = np.floor(src).astype(int)
        lam = src - x0
        x1 = np.minimum(x0 + 1, n_in - 1)
        np.add.at(m, (out, np.minimum(x0, n_in - 1)), 1.0 - lam)
        np.add.at(m, (out, x1), lam)
        return m
    x0 = np.floor(src).astype(int)
    t = src - x0
    for k in range(-1, 3):
        np.add.at(m, (out, np.clip(x0 + k, 0, n_in - 1)), _cubic(t - k, -0.75))
    return m


def resize(latents: np.ndarray, height: int, width: int, mode: str = "bilinear", antialias: bool = False) -> np.ndarray:
    """[N, C, h, w] -> [N, C, height, width], float32."""
    if mode not in MODES:
        raise SdrtError(f"latent resize mode {mode!r} is not one of: {', '.join(MODES)}")
    if height < 1 or width < 1 or not (math.isfinite(height) and math.isfinite(width)):
        raise SdrtError(f"cannot resize latents to {height}x{width}")
    x = np.asarray(latents, dtype=np.float64)
    rows = _matrix(x.shape[2], int(height), mode, antialias)
    cols = _matrix(x.shape[3], int(width), mode, antialias)
    return np.einsum("ih,nchw,jw->ncij", rows, x, cols, optimize=True).astype(np.float32)
