"""One pipeline call's arguments, checked and resolved before any engine runs (step 1 of the call).

`Call` holds what the rest of the call reads: the prompt lists, the mode (txt2img, img2img,
inpaint), the numbers the checks passed, the output size and the call's randomness. Every bad
argument is one line here (`sdrt.runtime.arguments`), so a call that reaches an engine is a valid one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.arguments import (check_call, check_extras, check_family_arguments, check_fraction,
                                    check_latents, prompt_lists, warn_unused_negative)
from sdrt.runtime.conditioning import tile_to
from sdrt.runtime import variation as variations
from sdrt.runtime.seeds import PerImageGenerator, image_seeds
from sdrt.spec import Family

#: how prompts are read: None (diffusers' way: cut at 77 tokens, brackets are text) or "a1111"
PROMPT_SYNTAXES = (None, "a1111")

#: the size and aesthetic arguments of SDXL's micro-conditioning (None when not given)
SIZE_ARGUMENTS = ("original_size", "crops_coords_top_left", "target_size", "negative_original_size",
                  "negative_crops_coords_top_left", "negative_target_size")


@dataclass
class Call:
    """A checked call: everything after step 1 reads this, never the raw arguments."""

    mode: str                       # txt2img | img2img | inpaint
    prompts: list[str]
    negatives: list[str]
    prompts_2: list[str] | None
    negatives_2: list[str] | None
    negative_given: bool            # a negative prompt was passed (SDXL's zeros for an empty one)
    steps: int
    guidance: float                 # guidance_scale as given
    cfg: bool                       # classifier-free guidance batch (guidance > 1 and not LCM)
    strength: float
    per_prompt: int
    rescale: float
    clip_skip: int | None
    denoising_start: float | None
    denoising_end: float | None
    height: int
    width: int
    images: list                    # PIL init images (img2img / inpaint)
    masks: list                     # PIL masks (inpaint)
    given_latents: np.ndarray | None  # latents passed as the image (a base model's output, for a refiner)
    noise: np.ndarray | None        # the caller's initial latents (`latents=`)
    sizes: dict[str, Any]           # SIZE_ARGUMENTS as given
    aesthetic_score: float
    negative_aesthetic_score: float
    output_type: str
    seed: int | None
    seeds: list[int] | None
    rng: Any                        # per-image generators, or the caller's generator
    syntax: str | None = None       # prompt syntax (PROMPT_SYNTAXES)
    variation: variations.Variation | None = None  # variation seeds (subseed, seed resize)

    @property
    def n(self) -> int:
        """Images in the call (prompts x images per prompt)."""
        return len(self.prompts) * self.per_prompt


def mode_of(masks: list, images: list, given_latents: np.ndarray | None) -> str:
    return "inpaint" if masks else "img2img" if images or given_latents is not None else "txt2img"


def check(family: Family, folder: Any, arguments: dict[str, Any], *,
          inputs: Callable[[Any, Any], tuple[list, list, np.ndarray | None]],
          size_of: Callable[..., tuple[int, int]], latent_channels: int, vae_scale_factor: int,
          guidance_is_embedded: bool) -> Call:
    """Step 1: check and resolve a call's arguments (`arguments`: Pipeline.__call__'s, by name).

    `inputs(image, mask_image)` loads the init images and masks (or latents given as the image),
    `size_of(height, width, images, masks, given_latents)` resolves and checks the output size."""
    a = arguments
    sizes = {key: a[key] for key in SIZE_ARGUMENTS}
    if not family.size_conditioning:
        check_family_arguments(family.name, folder,
                               {"prompt_2": a["prompt_2"], "negative_prompt_2": a["negative_prompt_2"], **sizes})
    images, masks, given_latents = inputs(a["image"], a["mask_image"])
    mode = mode_of(masks, images, given_latents)
    strength = a["strength"]
    if strength is None:
        strength = family.default_strength[mode] if mode != "txt2img" else 0.8
    steps, guidance, strength, per_prompt = check_call(
        num_inference_steps=a["num_inference_steps"], guidance_scale=a["guidance_scale"], strength=strength,
        num_images_per_prompt=a["num_images_per_prompt"], output_type=a["output_type"])
    rescale, clip_skip = check_extras(guidance_rescale=a["guidance_rescale"], clip_skip=a["clip_skip"])
    denoising_start = check_fraction("denoising_start", a["denoising_start"])
    denoising_end = check_fraction("denoising_end", a["denoising_end"])
    if denoising_start is not None and mode == "txt2img":
        raise SdrtError("denoising_start continues from an image or a base model's latents: pass image= "
                        "(img2img), or image= and mask_image= (inpainting)")
    if denoising_start is not None and denoising_end is not None and denoising_start >= denoising_end:
        raise SdrtError(f"denoising_start {denoising_start} must be below denoising_end {denoising_end}")
    syntax = a.get("prompt_syntax")
    if syntax not in PROMPT_SYNTAXES:
        raise SdrtError(f"prompt_syntax {syntax!r} is not known: leave it out (diffusers' way) or pass 'a1111'")
    prompts, negatives = prompt_lists(a["prompt"], a["negative_prompt"])
    warn_unused_negative(negatives, guidance)
    prompts_2 = prompt_lists(prompts, a["prompt_2"])[1] if a["prompt_2"] is not None else None
    negatives_2 = prompt_lists(prompts, a["negative_prompt_2"])[1] if a["negative_prompt_2"] is not None else None
    height, width = size_of(a["height"], a["width"], images, masks, given_latents)
    n = len(prompts) * per_prompt
    if a["generator"] is None:
        seeds = image_seeds(a["seed"], n)
        seed, rng = seeds[0], PerImageGenerator(seeds)
    else:
        seeds, seed, rng = None, None, a["generator"]  # the caller's generator: its seed is not ours to report
    f = vae_scale_factor
    variation = variations.check(a.get("subseed"), a.get("subseed_strength"), a.get("seed_resize_from_h"),
                                 a.get("seed_resize_from_w"), n, seeded=seeds is not None, vae_scale_factor=f)
    if variation is not None and a["latents"] is not None:
        raise SdrtError("latents= is the initial noise itself: leave out the variation seed (subseed_strength, "
                        "seed_resize_from) or the latents")
    noise = (check_latents(a["latents"], (n, latent_channels, height // f, width // f))
             if a["latents"] is not None else None)
    if given_latents is not None:
        given_latents = tile_to(check_latents(given_latents, given_latents.shape), n, "latent image")
    return Call(
        mode=mode, prompts=prompts, negatives=negatives, prompts_2=prompts_2, negatives_2=negatives_2,
        negative_given=a["negative_prompt"] is not None, steps=steps, guidance=guidance,
        cfg=guidance > 1.0 and not guidance_is_embedded, strength=strength, per_prompt=per_prompt,
        rescale=rescale, clip_skip=clip_skip, denoising_start=denoising_start, denoising_end=denoising_end,
        height=height, width=width, images=images, masks=masks, given_latents=given_latents, noise=noise,
        sizes=sizes, aesthetic_score=a["aesthetic_score"], negative_aesthetic_score=a["negative_aesthetic_score"],
        output_type=a["output_type"], seed=seed, seeds=seeds, rng=rng, syntax=syntax, variation=variation)
