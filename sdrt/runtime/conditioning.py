"""Image conditioning for img2img and inpainting: VAE latents sampled in numpy, masks at latent size.

Kept apart from the denoising loop because it runs once per call. The maths follows diffusers'
img2img / inpaint pipelines: the encoder returns mean and log-variance, the sample is
mean + exp(0.5 * clamp(logvar, -30, 20)) * noise, scaled by the VAE's scaling factor; a mask is
binarized at image size and shrunk to latent size by nearest neighbour (every f-th pixel).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sdrt.errors import SdrtError


def sample_latents(parameters: np.ndarray, rng: Any) -> np.ndarray:
    """Draw from the VAE's diagonal Gaussian ([B, 2C, h, w] -> [B, C, h, w]) with the call's generator."""
    mean, logvar = np.split(parameters.astype(np.float32), 2, axis=1)
    std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
    return mean + std * rng.standard_normal(mean.shape, dtype=np.float32)


def tile_to(batch: np.ndarray, n: int, label: str) -> np.ndarray:
    """Repeat a batch of k items to n (n a multiple of k), whole-batch order as diffusers does."""
    k = batch.shape[0]
    if k == n:
        return batch
    if k > n or n % k:
        raise SdrtError(f"{k} {label}s cannot be spread over {n} images: pass 1 {label}, or one per image")
    return np.concatenate([batch] * (n // k), axis=0)


def mask_latents(masks: np.ndarray, factor: int) -> np.ndarray:
    """[N, 1, H, W] binary masks -> [N, 1, H/f, W/f], nearest neighbour (torch's `interpolate` default)."""
    return np.ascontiguousarray(masks[:, :, ::factor, ::factor])


def masked_pixels(pixels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The image with the area to repaint set to 0 (mid-grey in [-1, 1])."""
    return pixels * (masks < 0.5)


def start_index(num_inference_steps: int, strength: float, order: int) -> tuple[int, int]:
    """(first timestep index, steps that will run) for `strength`, exactly as diffusers' get_timesteps."""
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    return t_start * order, num_inference_steps - t_start
