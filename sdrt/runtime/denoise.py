"""The denoising loop, shared by every family and mode: bound buffers, nothing allocated in the engines.

Before the loop the caller binds the UNet's per-call inputs (text embeddings, SDXL's text_embeds and
time_ids, LCM's timestep_cond) once. Each step writes the scaled latents into the bound `sample`
buffer (both halves under classifier-free guidance, the unconditional one first) and the timestep
into `timestep`, runs, and reads `out_sample`; then guidance, optional guidance rescale, the
scheduler step, and (inpainting with a 4-channel UNet) the blend of the known region back in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sdrt.runtime.added_conditioning import rescale_guidance
from sdrt.runtime.timing import StageTimings
from sdrt.spec import N

#: what a callback receives after each denoising step: (step index, timestep, latents [N, C, h, w])
StepCallback = Callable[[int, Any, np.ndarray], None]


@dataclass
class Blend:
    """Inpainting with a regular UNet: after each step, the unmasked area is the image re-noised to the
    next timestep (diffusers' StableDiffusion(XL)InpaintPipeline with 4 UNet channels)."""

    image_latents: np.ndarray
    noise: np.ndarray
    mask: np.ndarray


#: the denoiser's latents in, its timestep, its prediction out: the UNet's names (transformers: Optimum's)
UNET_NAMES = (N.SAMPLE, N.TIMESTEP, N.OUT_SAMPLE)
TRANSFORMER_NAMES = (N.LATENTS, N.TIMESTEP, N.OUT_LATENTS)


def denoise(unet: Any, sched: Any, timesteps: np.ndarray, x: np.ndarray, model_in: np.ndarray, *, images: int,
            latent_channels: int, guidance: bool, guidance_scale: float, guidance_rescale: float = 0.0,
            blend: Blend | None = None, rng: Any = None, callback: StepCallback | None = None,
            timings: StageTimings | None = None, names: tuple[str, str, str] = UNET_NAMES,
            before_unet: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
    """Run the steps on the prepared denoiser engine; `model_in` is the [batch, Cin, h, w] input buffer
    (inpainting UNets: mask and masked-image channels already filled); `names` its tensors' names.
    `before_unet(i, model_in, timesteps)` runs before each denoiser call, on the step's inputs
    (ControlNets: sdrt.runtime.controlnet); its time counts as the denoiser step's."""
    sample_name, timestep_name, output_name = names
    n, C = images, latent_channels
    t_in = np.zeros((model_in.shape[0],), dtype=np.float32)
    for i, t in enumerate(timesteps):
        t0 = time.perf_counter()
        scaled = sched.scale_model_input(x, t)
        model_in[:n, :C] = scaled
        if guidance:
            model_in[n:, :C] = scaled
        t_in.fill(t)
        t1 = time.perf_counter()
        if before_unet is not None:
            before_unet(i, model_in, t_in)
        out = unet.run({sample_name: model_in, timestep_name: t_in})[output_name]
        t2 = time.perf_counter()
        if guidance:  # views (no copy for fp32 engines); the guidance formula makes a new array
            uncond = out[:n].astype(np.float32, copy=False)
            text = out[n:].astype(np.float32, copy=False)
            noise_pred = uncond + guidance_scale * (text - uncond)
            if guidance_rescale > 0.0:
                noise_pred = rescale_guidance(noise_pred, text, guidance_rescale)
        else:
            noise_pred = out.astype(np.float32)  # a copy: the engine overwrites `out` next step
        x = sched.step(noise_pred, t, x, generator=rng).prev_sample
        if blend is not None:
            proper = blend.image_latents
            if i < len(timesteps) - 1:
                proper = sched.add_noise(blend.image_latents, blend.noise, timesteps[i + 1:i + 2])
            x = (1 - blend.mask) * proper + blend.mask * x
        if callback is not None:
            callback(i, t, x)
        if timings is not None:
            timings.unet_steps.append(t2 - t1)
            timings.host_steps.append(time.perf_counter() - t0 - (t2 - t1))
    return np.asarray(x, dtype=np.float32)


def cut_timesteps_end(timesteps: np.ndarray, denoising_end: float, num_train_timesteps: int) -> np.ndarray:
    """The steps the base model runs before handing off (diffusers' denoising_end): t >= the cutoff."""
    cutoff = int(round(num_train_timesteps - denoising_end * num_train_timesteps))
    return timesteps[: int(np.sum(np.asarray(timesteps) >= cutoff))]


def start_at(timesteps: np.ndarray, denoising_start: float, num_train_timesteps: int, order: int) -> int:
    """Index of the refiner's first step (diffusers' denoising_start): the steps below the cutoff,
    plus one for a second-order scheduler that would otherwise start between its two evaluations."""
    cutoff = int(round(num_train_timesteps - denoising_start * num_train_timesteps))
    count = int(np.sum(np.asarray(timesteps) < cutoff))
    if order == 2 and count % 2 == 0:
        count += 1
    return len(timesteps) - count
