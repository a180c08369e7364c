"""The UNet's extra conditioning beyond text: SDXL's micro-conditioning ``time_ids``, LCM's guidance
embedding ``timestep_cond``, and the guidance-rescale formula. Pure numpy, as diffusers computes them.

``time_ids`` (one row per UNet row):

- base txt2img: ``original_size + crops_coords_top_left + target_size``; the unconditional rows use
  the ``negative_`` forms when ``negative_original_size`` and ``negative_target_size`` are given.
  diffusers stacks [negative, positive] and then repeats that pair per image, so with several images
  and distinct negative ids the rows alternate; we reproduce it exactly.
- img2img / inpainting: the same six numbers, except that the negative row keeps the *positive*
  crop (diffusers' code does); the refiner (``requires_aesthetics_score``) replaces target_size by
  the aesthetic score: ``original_size + crops + (aesthetic_score,)`` (5 numbers), the negative
  row ``negative_original_size + negative_crops + (negative_aesthetic_score,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdrt.runtime.arguments import check_pair

Pair = tuple[int, int]


@dataclass(frozen=True)
class SizeConditioning:
    """diffusers' size and aesthetic arguments, already defaulted (sizes in pixels, (height, width))."""

    original_size: Pair
    crops_coords_top_left: Pair
    target_size: Pair
    negative_original_size: Pair | None = None
    negative_crops_coords_top_left: Pair = (0, 0)
    negative_target_size: Pair | None = None
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5


def size_conditioning(height: int, width: int, sizes: dict[str, Any], aesthetic_score: Any,
                       negative_aesthetic_score: Any) -> SizeConditioning:
    """The call's size arguments (checked; None where not given) with diffusers' defaults filled in."""
    pairs = {key: check_pair(key, value) for key, value in sizes.items()}
    return SizeConditioning(
        original_size=pairs["original_size"] or (height, width),
        crops_coords_top_left=pairs["crops_coords_top_left"] or (0, 0),
        target_size=pairs["target_size"] or (height, width),
        negative_original_size=pairs["negative_original_size"],
        negative_crops_coords_top_left=pairs["negative_crops_coords_top_left"] or (0, 0),
        negative_target_size=pairs["negative_target_size"],
        aesthetic_score=float(aesthetic_score), negative_aesthetic_score=float(negative_aesthetic_score))


def time_ids(c: SizeConditioning, *, mode: str, aesthetic: bool, images: int, guidance: bool) -> np.ndarray:
    """[UNet batch, 5 or 6] float32 time ids for a call of `mode` (txt2img, img2img, inpaint)."""
    if mode == "txt2img":
        positive = c.original_size + c.crops_coords_top_left + c.target_size
        given = c.negative_original_size is not None and c.negative_target_size is not None
        negative = (c.negative_original_size + c.negative_crops_coords_top_left + c.negative_target_size
                    if given else positive)
        rows = np.asarray([negative, positive] if guidance else [positive], dtype=np.float32)
        return np.tile(rows, (images, 1))
    negative_original = c.negative_original_size or c.original_size
    negative_target = c.negative_target_size or c.target_size
    if aesthetic:
        positive = c.original_size + c.crops_coords_top_left + (c.aesthetic_score,)
        negative = negative_original + c.negative_crops_coords_top_left + (c.negative_aesthetic_score,)
    else:
        positive = c.original_size + c.crops_coords_top_left + c.target_size
        negative = negative_original + c.crops_coords_top_left + negative_target
    rows = np.repeat(np.asarray([positive], dtype=np.float32), images, axis=0)
    if guidance:
        rows = np.concatenate([np.repeat(np.asarray([negative], dtype=np.float32), images, axis=0), rows])
    return rows


def guidance_embedding(guidance_scale: float, images: int, dim: int) -> np.ndarray:
    """LCM's `timestep_cond`: the sinusoidal embedding of (guidance_scale - 1) * 1000, [images, dim] float32."""
    w = np.full((images,), (guidance_scale - 1.0) * 1000.0, dtype=np.float32)
    half = dim // 2
    scale = math.log(10000.0) / (half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * np.float32(-scale))
    angles = w[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if dim % 2 == 1:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


def rescale_guidance(guided: np.ndarray, text: np.ndarray, guidance_rescale: float) -> np.ndarray:
    """Guidance rescale (Lin et al. 2023, sec. 3.4): match the guided prediction's per-image std to the
    text prediction's, mixed in by `guidance_rescale` (torch.std: unbiased)."""
    axes = tuple(range(1, guided.ndim))
    std_text = text.std(axis=axes, keepdims=True, ddof=1)
    std_guided = guided.std(axis=axes, keepdims=True, ddof=1)
    rescaled = guided * (std_text / std_guided)
    return (guidance_rescale * rescaled + (1.0 - guidance_rescale) * guided).astype(np.float32)
