"""One Flux call's arguments, checked and resolved before any engine runs (step 1 of its call).

diffusers' FluxPipeline (and its Img2Img, Inpaint and Fill twins) take: `prompt` (CLIP's pooled
text), `prompt_2` (T5's, default `prompt`), `negative_prompt` / `negative_prompt_2` with
`true_cfg_scale` > 1 (true classifier-free guidance: the negative prompt's own transformer rows),
`guidance_scale` (the distilled guidance a dev-style transformer embeds; a model without the
guidance embedding ignores it, as diffusers does — sdrt says so once on stderr), `sigmas`,
`max_sequence_length` (T5 tokens, at most what the export allows), `latents` packed [N, tokens, 4C].
Every bad value is one line here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from sdrt.errors import SdrtError, warn
from sdrt.runtime.arguments import check_call, prompt_lists
from sdrt.runtime.seeds import PerImageGenerator, image_seeds

#: the longest T5 context diffusers' Flux pipelines take (an export may record less)
MAX_SEQUENCE_LENGTH = 512
#: diffusers' default guidance scale per mode (FluxPipeline 3.5; its Img2Img and Inpaint 7.0; Fill 30)
DEFAULT_GUIDANCE = {"txt2img": 3.5, "img2img": 7.0, "inpaint": 7.0, "fill": 30.0}
#: FluxPipeline's default steps (Fill: 50)
DEFAULT_STEPS = {"fill": 50}
DEFAULT_STEPS_OTHERWISE = 28
#: the arguments of the UNet families that Flux has no use for (a value for one is an error, not ignored)
UNET_ONLY = ("clip_skip", "guidance_rescale", "original_size", "crops_coords_top_left", "target_size",
             "negative_original_size", "negative_crops_coords_top_left", "negative_target_size",
             "denoising_start", "denoising_end")


@dataclass
class FluxCall:
    """A checked call: everything after step 1 reads this, never the raw arguments."""

    mode: str                       # txt2img | img2img | inpaint (Fill models: inpaint)
    prompts: list[str]
    prompts_2: list[str]
    negatives: list[str]
    negatives_2: list[str]
    true_cfg: bool                  # the negative prompt's rows run beside the positive ones
    true_cfg_scale: float
    guidance: float | None          # the embedded guidance scale (None: the model has no guidance embedding)
    guidance_given: float           # guidance_scale as given or defaulted (what the metadata records)
    steps: int
    sigmas: np.ndarray | None
    strength: float
    per_prompt: int
    max_sequence_length: int
    height: int
    width: int
    images: list
    masks: list
    given_latents: np.ndarray | None  # the image given as latents [N, C, h, w]
    latents: np.ndarray | None        # the caller's packed latents [N, tokens, 4C]
    output_type: str
    seed: int | None
    seeds: list[int] | None
    rng: Any

    @property
    def n(self) -> int:
        return len(self.prompts) * self.per_prompt

    @property
    def rows(self) -> int:
        """Transformer rows: the negative prompt's first under true CFG."""
        return 2 * self.n if self.true_cfg else self.n


def check(arguments: dict[str, Any], *, folder: Any, fill: bool, guidance_embedded: bool, latent_channels: int,
          vae_scale_factor: int, max_sequence_length: int, default_strength: dict[str, float],
          inputs: Callable[[Any, Any], tuple[list, list, np.ndarray | None]],
          size_of: Callable[..., tuple[int, int]]) -> FluxCall:
    a = arguments
    for key in UNET_ONLY:
        if a.get(key) is not None:
            raise SdrtError(f"{key} is an argument of the UNet families (SD, SDXL); {folder} is a Flux model: "
                            f"leave {key} out")
    images, masks, given_latents = inputs(a["image"], a["mask_image"])
    mode = "inpaint" if masks else "img2img" if images or given_latents is not None else "txt2img"
    defaults_key = "fill" if fill else mode
    strength = a["strength"]
    if strength is None:
        strength = 1.0 if fill or mode == "txt2img" else default_strength[mode]
    steps_given = a["num_inference_steps"]
    steps_given = DEFAULT_STEPS.get(defaults_key, DEFAULT_STEPS_OTHERWISE) if steps_given is None else steps_given
    guidance_given = a["guidance_scale"]
    guidance_given = DEFAULT_GUIDANCE[defaults_key] if guidance_given is None else guidance_given
    steps, guidance_value, strength, per_prompt = check_call(
        num_inference_steps=steps_given, guidance_scale=guidance_given, strength=strength,
        num_images_per_prompt=a["num_images_per_prompt"], output_type=a["output_type"])
    if not guidance_embedded and a["guidance_scale"] is not None and guidance_value > 1.0:
        warn(f"guidance_scale {guidance_value:g} is ignored: this Flux model has no guidance embedding (schnell-style, "
             f"as diffusers ignores it too); for classifier-free guidance pass a negative prompt with "
             f"true_cfg_scale > 1 (--true-cfg-scale)")
    true_cfg_scale = _scale("true_cfg_scale", a["true_cfg_scale"])
    prompts, negatives = prompt_lists(a["prompt"], a["negative_prompt"])
    prompts_2 = prompt_lists(prompts, a["prompt_2"])[1] if a["prompt_2"] is not None else list(prompts)
    negatives_2 = (prompt_lists(prompts, a["negative_prompt_2"])[1] if a["negative_prompt_2"] is not None
                   else list(negatives))
    negative_given = a["negative_prompt"] is not None or a["negative_prompt_2"] is not None
    true_cfg = true_cfg_scale > 1.0 and negative_given  # diffusers: an empty negative prompt counts as given
    if any(negatives + negatives_2) and not true_cfg:
        warn(f"the negative prompt is ignored: true_cfg_scale {true_cfg_scale:g} <= 1 turns true classifier-free "
             f"guidance off; pass --true-cfg-scale > 1 (e.g. 4) to use it (it doubles the transformer's work)")
    length = _sequence_length(max_sequence_length if a["max_sequence_length"] is None else a["max_sequence_length"],
                              max_sequence_length)
    sigmas = _sigmas(a["sigmas"])
    height, width = size_of(a["height"], a["width"], images, masks, given_latents)
    n = len(prompts) * per_prompt
    if a["generator"] is None:
        seeds = image_seeds(a["seed"], n)
        seed, rng = seeds[0], PerImageGenerator(seeds)
    else:
        seeds, seed, rng = None, None, a["generator"]
    latents = None
    if a["latents"] is not None:
        f = vae_scale_factor
        tokens = (height // f // 2) * (width // f // 2)
        latents = np.asarray(a["latents"], dtype=np.float32)
        if latents.shape != (n, tokens, 4 * latent_channels):
            raise SdrtError(f"latents have shape {tuple(latents.shape)}, this call needs {(n, tokens, 4 * latent_channels)}"
                            f" (images, tokens = (height/{2 * f}) x (width/{2 * f}), 4 x latent channels: Flux's packed "
                            f"latents, as FluxPipeline takes them)")
    return FluxCall(
        mode=mode, prompts=prompts, prompts_2=prompts_2, negatives=negatives, negatives_2=negatives_2,
        true_cfg=true_cfg, true_cfg_scale=true_cfg_scale, guidance=guidance_value if guidance_embedded else None,
        guidance_given=guidance_value, steps=steps, sigmas=sigmas, strength=strength, per_prompt=per_prompt,
        max_sequence_length=length, height=height, width=width, images=images, masks=masks,
        given_latents=given_latents, latents=latents, output_type=a["output_type"], seed=seed, seeds=seeds, rng=rng)


def _scale(label: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x) or x < 0:
        raise SdrtError(f"{label} {value!r} must be a finite number >= 0 (> 1 with a negative prompt turns true "
                        f"classifier-free guidance on; 4 is usual)")
    return x


def _sequence_length(value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SdrtError(f"max_sequence_length {value!r} must be a whole number of T5 tokens >= 1 (e.g. 512 for dev, "
                        f"256 for schnell)")
    if value > limit:
        raise SdrtError(f"max_sequence_length {value} is above {limit}, the most this model's T5 encoder takes "
                        f"(pipeline.max_sequence_length in sdrt.json, diffusers' limit): use at most {limit}")
    return int(value)


def _sigmas(value: Sequence[float] | None) -> np.ndarray | None:
    if value is None:
        return None
    try:
        sigmas = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise SdrtError(f"sigmas {value!r} must be a list of numbers (the noise levels, from ~1 down)") from None
    if sigmas.size == 0 or not np.isfinite(sigmas).all():
        raise SdrtError(f"sigmas must be a non-empty list of finite numbers, got {list(value)!r}")
    return sigmas
