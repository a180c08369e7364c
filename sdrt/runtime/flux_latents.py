"""Flux's token geometry in numpy: packing latents into tokens, their position ids, masks as tokens.

Flux's transformer reads an image as tokens: each 2x2 patch of latent pixels, all C channels, is one
token of 4C values, in row-major order (FluxPipeline's `_pack_latents`; `unpack` is its inverse).
Each image token carries its position (0, row, column) in the token grid, each text token (0, 0, 0)
(`image_ids`, `text_ids`: the transformer turns them into rotary embeddings). An inpainting mask is
shrunk to latent size by nearest neighbour, repeated over the C channels and packed like the latents
(`mask_tokens`); Flux Fill's mask keeps all f x f pixels of each latent pixel as channels instead
(`fill_mask_tokens`).
"""

from __future__ import annotations

import numpy as np

#: latent pixels per token side
PATCH = 2


def pack(latents: np.ndarray) -> np.ndarray:
    """[N, C, h, w] -> [N, (h/2)(w/2), 4C]: each 2x2 patch one token, channel-major inside the token."""
    n, c, h, w = latents.shape
    patches = latents.reshape(n, c, h // PATCH, PATCH, w // PATCH, PATCH).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(patches.reshape(n, (h // PATCH) * (w // PATCH), c * PATCH * PATCH))


def unpack(tokens: np.ndarray, h: int, w: int) -> np.ndarray:
    """[N, (h/2)(w/2), 4C] -> [N, C, h, w] latents of latent size h x w (the inverse of `pack`)."""
    n, _, width = tokens.shape
    c = width // (PATCH * PATCH)
    patches = tokens.reshape(n, h // PATCH, w // PATCH, c, PATCH, PATCH).transpose(0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(patches.reshape(n, c, h, w))


def image_ids(rows: int, columns: int) -> np.ndarray:
    """float32 [rows * columns, 3]: (0, row, column) of each token of a rows x columns grid, row-major."""
    ids = np.zeros((rows, columns, 3), dtype=np.float32)
    ids[..., 1] = np.arange(rows, dtype=np.float32)[:, None]
    ids[..., 2] = np.arange(columns, dtype=np.float32)[None, :]
    return ids.reshape(rows * columns, 3)


def text_ids(tokens: int) -> np.ndarray:
    """float32 [tokens, 3] zeros: text tokens have no position in the image."""
    return np.zeros((tokens, 3), dtype=np.float32)


def mask_tokens(masks: np.ndarray, h: int, w: int, channels: int) -> np.ndarray:
    """[N, 1, H, W] binary masks -> [N, (h/2)(w/2), 4C]: nearest neighbour down to the h x w latent
    (torch's `interpolate` default: every (H/h)-th pixel), repeated over the channels, packed."""
    n, _, height, width = masks.shape
    small = masks[:, :, :: height // h, :: width // w][:, :, :h, :w]
    return pack(np.repeat(small, channels, axis=1).astype(np.float32))


def fill_mask_tokens(masks: np.ndarray, h: int, w: int, factor: int) -> np.ndarray:
    """Flux Fill's mask: [N, 1, f*h, f*w] -> [N, (h/2)(w/2), 4·f·f]: every f x f pixel block of a latent
    pixel becomes f·f channels (FluxFillPipeline's prepare_mask_latents), then packed."""
    n = masks.shape[0]
    blocks = masks[:, 0].reshape(n, h, factor, w, factor).transpose(0, 2, 4, 1, 3)
    return pack(np.ascontiguousarray(blocks.reshape(n, factor * factor, h, w), dtype=np.float32))
