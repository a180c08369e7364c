"""Tiled VAE decode: the latents decoded in overlapping tiles and blended, as diffusers'
`AutoencoderKL.tiled_decode` does it (`vae.enable_tiling()`), so the decoder's full-resolution
activations -- what sets the peak memory of a large image on the CPU -- exist for one tile at a time.

The numbers are diffusers': the tile is `tile_size` px square (`tile_sample_min_size`; default the
VAE's own `sample_size`), `tile_size / f` latent pixels (`tile_latent_min_size`); tiles start every
`int(0.75 * tile_latent)` latent pixels, edge tiles are what is left of the latent (smaller); each
tile is blended in place with its (already blended) upper and left neighbours over
`int(0.25 * tile_size)` px, linearly, then cropped to `tile_size - that` px. Only latents larger
than a tile in either dimension are tiled; the rest decode whole, exactly as untiled.

Tiles are decoded grouped by shape (at most a few distinct ones: full, right edge, bottom edge,
corner), so the engine re-prepares its buffers only when the shape changes; the decoded tiles are
kept (about 1.8x the output image, in pixels) and blended afterwards in diffusers' order.

Default tile size, for exports before `vae_sample_size` was recorded in `sdrt.json`: the
pipeline's default image size (`sample_size x vae_scale_factor`, which equals the VAE's
`sample_size` in every released SD 1.x/2.x/XL checkpoint), else 512 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from sdrt.errors import SdrtError
from sdrt.spec import N

OVERLAP = 0.25  # diffusers' tile_overlap_factor
FALLBACK_TILE_PX = 512


@dataclass(frozen=True)
class VaeTiles:
    """Tile geometry for one VAE: `sample` px square tiles, `latent` = sample / f latent pixels."""

    sample: int
    latent: int

    @property
    def stride(self) -> int:  # latent pixels between tile starts (diffusers' overlap_size)
        return int(self.latent * (1 - OVERLAP))

    @property
    def blend(self) -> int:  # px blended with the neighbour (blend_extent)
        return int(self.sample * OVERLAP)

    @property
    def keep(self) -> int:  # px of each tile kept after blending (row_limit)
        return self.sample - self.blend

    def applies(self, latent_shape: tuple[int, ...]) -> bool:
        """diffusers' `_decode` condition: tile only a latent larger than one tile in either dimension."""
        return latent_shape[-1] > self.latent or latent_shape[-2] > self.latent

    def as_dict(self, tiled: bool) -> dict[str, Any]:
        return {"tile_size": self.sample, "overlap": OVERLAP, "tiled": tiled}


def default_tile_size(pipeline: Mapping[str, Any]) -> int:
    """The VAE's sample_size (px) as export recorded it; older exports: see the module docstring."""
    recorded = pipeline.get("vae_sample_size")
    if recorded:
        return int(recorded)
    if pipeline.get("sample_size") and pipeline.get("vae_scale_factor"):
        return int(pipeline["sample_size"]) * int(pipeline["vae_scale_factor"])
    return FALLBACK_TILE_PX


def tiles_for(pipeline: Mapping[str, Any], tile_size: Any = None) -> VaeTiles:
    """Check a tile size (px; None: the default) against the VAE factor f: a whole multiple of 4·f,
    so the tiles' overlap and crop land on whole latent pixels (what diffusers' arithmetic assumes)."""
    f = int(pipeline["vae_scale_factor"])
    given = tile_size is not None
    size = default_tile_size(pipeline) if not given else tile_size
    what = "vae_tile_size (--vae-tile-size)" if given else "the VAE's recorded sample_size"
    fix = "pass another vae_tile_size" if not given else "choose another"
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise SdrtError(f"{what} {size!r} must be a whole number of pixels > 0: {fix}, e.g. {8 * 4 * f}")
    unit = 4 * f
    if size % unit:
        lower, upper = max(unit, size // unit * unit), (size // unit + 1) * unit
        raise SdrtError(f"{what} {size} px is not a multiple of {unit} (4 x the VAE factor {f}, so tiles overlap "
                        f"by whole latent pixels): {fix}, e.g. {lower} or {upper}")
    return VaeTiles(sample=int(size), latent=int(size) // f)


def from_options(pipeline: Mapping[str, Any], enabled: bool, tile_size: Any = None) -> VaeTiles | None:
    """`Pipeline.load`'s vae_tiling / vae_tile_size: the tiles, or None for the whole decode."""
    if not enabled:
        if tile_size is not None:
            raise SdrtError(f"vae_tile_size {tile_size} needs vae_tiling=True (--vae-tiling): add it, or drop the size")
        return None
    return tiles_for(pipeline, tile_size)


def blend_v(above: np.ndarray, tile: np.ndarray, extent: int) -> None:
    """Fade `above`'s last rows into `tile`'s first ones, in place (diffusers' blend_v)."""
    e = min(above.shape[2], tile.shape[2], extent)
    if e > 0:
        w = (np.arange(e) / e)[:, None]
        tile[:, :, :e, :] = above[:, :, -e:, :] * (1 - w).astype(np.float32) + tile[:, :, :e, :] * w.astype(np.float32)


def blend_h(left: np.ndarray, tile: np.ndarray, extent: int) -> None:
    """Fade `left`'s last columns into `tile`'s first ones, in place (diffusers' blend_h)."""
    e = min(left.shape[3], tile.shape[3], extent)
    if e > 0:
        w = np.arange(e) / e
        tile[:, :, :, :e] = left[:, :, :, -e:] * (1 - w).astype(np.float32) + tile[:, :, :, :e] * w.astype(np.float32)


def decode(engine: Any, z: np.ndarray, tiles: VaeTiles | None) -> np.ndarray:
    """Unscaled latents -> pixels through the `vae_decoder` engine: whole, or in tiles when `tiles`
    is set and the latent is larger than one (the result may be the engine's own output buffer)."""

    def run(part: np.ndarray) -> np.ndarray:
        engine.prepare({"B": part.shape[0], "h": part.shape[2], "w": part.shape[3]})
        return engine.run({N.LATENT_SAMPLE: part})[N.IMAGE]

    return tiled_decode(run, z, tiles) if tiles is not None and tiles.applies(z.shape) else run(z)


def tiled_decode(decode: Callable[[np.ndarray], np.ndarray], z: np.ndarray, tiles: VaeTiles) -> np.ndarray:
    """[B, C, h, w] latents (already unscaled) -> [B, 3, H, W] pixels, one `decode` call per tile.

    `decode` may return the engine's own output buffer: each tile is copied before the next call."""
    L, step = tiles.latent, tiles.stride
    h, w = z.shape[2], z.shape[3]
    starts_y, starts_x = range(0, h, step), range(0, w, step)

    def shape(box: tuple[int, int]) -> tuple[int, int]:
        return min(L, h - box[0]), min(L, w - box[1])

    decoded: dict[tuple[int, int], np.ndarray] = {}
    for box in sorted(((i, j) for i in starts_y for j in starts_x), key=shape):  # one prepare per shape
        i, j = box
        decoded[box] = np.array(decode(np.ascontiguousarray(z[:, :, i:i + L, j:j + L])), dtype=np.float32)
    first = decoded[(0, 0)]
    f = first.shape[2] // shape((0, 0))[0]
    out = np.empty((z.shape[0], first.shape[1], h * f, w * f), dtype=np.float32)
    keep = tiles.keep
    for r, i in enumerate(starts_y):
        for c, j in enumerate(starts_x):
            tile = decoded[(i, j)]
            if r > 0:
                blend_v(decoded[(i - step, j)], tile, tiles.blend)
            if c > 0:
                blend_h(decoded[(i, j - step)], tile, tiles.blend)
            part = tile[:, :, :keep, :keep]
            out[:, :, r * keep:r * keep + part.shape[2], c * keep:c * keep + part.shape[3]] = part
    return out
