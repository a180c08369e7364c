"""AUTOMATIC1111's variation seeds: the initial noise of one seed bent towards another's.

`subseed` (image i: subseed + i, like seeds) draws a second noise; `subseed_strength` s in [0, 1]
interpolates spherically from the seed's noise (s = 0: exactly the base image) to the subseed's
(s = 1). `seed_resize_from_h/w` draws the seed's noise at that image size instead and pastes it into
the middle of the noise of the real size, so a seed keeps its composition at another resolution.
As in the web UI, the interpolation is spherical along the latent height (each channel and column
of one image on its own), and only the initial noise changes: an ancestral sampler's later draws
come from the seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.arguments import _whole, real_in_range
from sdrt.runtime.seeds import image_seeds


@dataclass(frozen=True)
class Variation:
    """A checked request: per-image subseeds, the strength, and the size the seed's noise is drawn at."""

    subseeds: list[int]
    strength: float
    resize_from: tuple[int, int] | None  # (height, width) in pixels

    def describe(self) -> dict[str, Any]:
        """What the call records (the infotext's "Variation seed" fields)."""
        out: dict[str, Any] = {}
        if self.strength > 0:
            out.update(subseed=self.subseeds[0], subseeds=self.subseeds, subseed_strength=self.strength)
        if self.resize_from is not None:
            out["seed_resize_from"] = list(self.resize_from)
        return out


def check(subseed: Any, strength: Any, resize_h: Any, resize_w: Any, n: int, *, seeded: bool,
          vae_scale_factor: int) -> Variation | None:
    """None when nothing is asked (strength 0, no resize); one line for each bad value."""
    strength = real_in_range("subseed_strength", 0.0 if strength is None else strength, 0.0, 1.0,
                     "use a value between 0 (the seed's image) and 1 (the subseed's)")
    resize_h = _whole("seed_resize_from_h", 0 if resize_h in (None, -1) else resize_h, 0)
    resize_w = _whole("seed_resize_from_w", 0 if resize_w in (None, -1) else resize_w, 0)
    resize = (resize_h, resize_w) if resize_h > 0 and resize_w > 0 else None
    if resize is not None and (resize_h < vae_scale_factor or resize_w < vae_scale_factor):
        raise SdrtError(f"seed_resize_from {resize_h}x{resize_w} is smaller than one latent pixel "
                        f"({vae_scale_factor} px): give a real image size, or 0 to turn it off")
    if strength == 0.0 and resize is None:
        return None
    if not seeded:
        raise SdrtError("variation seeds (subseed_strength, seed_resize_from) draw from per-image seeds: pass "
                        "seed= instead of generator=")
    subseeds = image_seeds(subseed, n) if strength > 0 else []
    return Variation(subseeds, strength, resize)


def slerp(strength: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Spherical interpolation of two noises [C, h, w] along h (the web UI's axis), per channel and column."""
    low_unit = low / np.linalg.norm(low, axis=1, keepdims=True)
    high_unit = high / np.linalg.norm(high, axis=1, keepdims=True)
    dot = (low_unit * high_unit).sum(axis=1)
    if dot.mean() > 0.9995:  # nearly parallel: a straight line is as good and stays finite
        return (1.0 - strength) * low + strength * high
    omega = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_omega = np.sin(omega)
    a = (np.sin((1.0 - strength) * omega) / sin_omega)[:, None, :]
    b = (np.sin(strength * omega) / sin_omega)[:, None, :]
    return (a * low + b * high).astype(low.dtype)


def _paste_centered(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """`source` [C, h', w'] in the middle of `target` [C, h, w] (cropped to it where larger)."""
    out = target.copy()
    (_, h, w), (_, hs, ws) = target.shape, source.shape
    dy, dx = (h - hs) // 2, (w - ws) // 2
    ty, tx, sy, sx = max(dy, 0), max(dx, 0), max(-dy, 0), max(-dx, 0)
    ch, cw = min(hs, h), min(ws, w)
    out[:, ty:ty + ch, tx:tx + cw] = source[:, sy:sy + ch, sx:sx + cw]
    return out


def initial_noise(rng: Any, shape: Sequence[int], variation: Variation | None, seeds: Sequence[int] | None,
                  vae_scale_factor: int) -> np.ndarray:
    """The call's initial noise [n, C, h, w]: the generator's draw, bent by the variation if any.

    The generator is drawn exactly as without a variation (so everything after it is unchanged);
    the seed's noise at another size and the subseeds' come from fresh generators of those seeds."""
    noise = rng.standard_normal(tuple(shape), dtype=np.float32)
    if variation is None:
        return noise
    out = noise.copy()
    f = vae_scale_factor
    for i, seed in enumerate(seeds or []):
        base = noise[i]
        if variation.resize_from is not None:
            small = (shape[1], variation.resize_from[0] // f, variation.resize_from[1] // f)
            base = np.random.default_rng(seed).standard_normal(small, dtype=np.float32)
        if variation.strength > 0:
            sub = np.random.default_rng(variation.subseeds[i]).standard_normal(base.shape, dtype=np.float32)
            base = slerp(variation.strength, base, sub)
        out[i] = _paste_centered(noise[i], base) if base.shape != noise[i].shape else base
    return out
