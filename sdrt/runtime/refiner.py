"""The base -> refiner hand-off (diffusers' "ensemble of experts") on two sdrt pipelines.

The base model denoises the high-noise part of the schedule (up to `denoising_end`) and returns its
latents; the refiner, an img2img model of the same latent space, continues from them at the same
point (`denoising_start = denoising_end`) with the same number of steps, and decodes. Both calls
take the same prompt; each draws from its own generator (diffusers passes one generator to each
pipeline; with seeds, the refiner uses the same seeds as the base).
"""

from __future__ import annotations

from typing import Any

from sdrt.errors import SdrtError
from sdrt.manifest import Manifest

#: what must be equal for a refiner to read the base's latents
LATENT_SPACE = ("latent_channels", "scaling_factor", "shift_factor", "vae_scale_factor")


def check_pair(base: Manifest, refiner: Manifest) -> None:
    """One line when `refiner` cannot continue from `base`'s latents."""
    if not base.family_spec.txt2img:
        raise SdrtError(f"{base.folder} is a {base.family} model, not a base model: pass the base as --model "
                        f"and the refiner as --refiner")
    if refiner.family_spec.mode_class(str(refiner.pipeline.get("class_name")), "img2img") is None \
            or refiner.pipeline.get("inpainting"):
        raise SdrtError(f"{refiner.folder} cannot refine (family {refiner.family}): give an SDXL refiner export")
    for key in LATENT_SPACE:
        a, b = base.pipeline.get(key), refiner.pipeline.get(key)
        if a != b:
            raise SdrtError(f"the base ({base.folder}) and the refiner ({refiner.folder}) have different latent "
                            f"spaces ({key} {a} vs {b}): use a refiner made for this base (SDXL base 1.0 + "
                            f"refiner 1.0 share one)")


def generate(base: Any, refiner: Any, prompt: Any, *, denoising_end: float, refiner_options: dict[str, Any] | None = None,
             **options: Any) -> Any:
    """Run the base up to `denoising_end`, then the refiner from there; returns the refiner's output
    (its `parameters` also hold the base's, under "base")."""
    check_pair(base.manifest, refiner.manifest)
    output_type = options.pop("output_type", "pil")
    callback = options.pop("callback", None)
    first = base(prompt, denoising_end=denoising_end, output_type="latent", callback=callback, **options)
    shared = {k: v for k, v in options.items()
              if k in ("negative_prompt", "num_inference_steps", "guidance_scale", "num_images_per_prompt",
                       "scheduler", "seed", "generator", "guidance_rescale")}
    if "seed" in shared and "seed" not in (refiner_options or {}):
        shared["seed"] = first.seeds if getattr(first, "seeds", None) else first.seed
    if shared.get("num_images_per_prompt"):  # the latents already hold every image
        shared["num_images_per_prompt"] = 1
        prompt = [p for p in ([prompt] if isinstance(prompt, str) else prompt)
                  for _ in range(options["num_images_per_prompt"])]
        if isinstance(shared.get("negative_prompt"), list):
            shared["negative_prompt"] = [p for p in shared["negative_prompt"]
                                         for _ in range(options["num_images_per_prompt"])]
    result = refiner(prompt, image=first.images, denoising_start=denoising_end, output_type=output_type,
                     callback=callback, **{**shared, **(refiner_options or {})})
    result.parameters["base"] = first.parameters
    result.timings.total += first.timings.total
    return result
