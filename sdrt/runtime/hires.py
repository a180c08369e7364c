"""AUTOMATIC1111's hires fix: txt2img at the given size, upscale, then img2img at the larger size.

    from sdrt.runtime.hires import HiresFix, generate
    out = generate(pipe, "a lighthouse", hires=HiresFix(scale=2, upscaler="Latent", denoising_strength=0.6),
                   width=512, height=512, num_inference_steps=20, seed=1)

As the web UI documents it: the first pass draws at width x height; the target is `scale` times that,
or `resize_x` x `resize_y` (one of them 0: the other follows the aspect ratio; both: the image is
upscaled to cover the target and cropped to it, in the middle); sizes are rounded down to what the
model's UNet takes. The upscaler is a latent one (`Latent`: bilinear; `Latent (antialiased)`,
`Latent (bicubic)`, `Latent (bicubic antialiased)`, `Latent (nearest)`, `Latent (nearest-exact)`: as
PyTorch's interpolate, `sdrt.runtime.latent_resize`) or an image resampler (`Lanczos`, `Nearest`,
`None`: decode, resize with PIL, encode again). The second pass runs exactly `steps` steps (0: the
first pass's) from `denoising_strength` of the way up the noise schedule, as the web UI's hires pass
does, with its own sampler and prompts when given, and the same seeds (and variation seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.arguments import real_in_range
from sdrt.runtime import latent_resize

#: the web UI's latent upscalers -> (interpolate mode, antialias)
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False),
}
#: image resamplers (PIL's filter names); the web UI's "None" upscaler resizes with Lanczos
IMAGE_UPSCALERS = {"Lanczos": "LANCZOS", "Nearest": "NEAREST", "None": "LANCZOS"}
UPSCALERS = (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)


@dataclass(frozen=True)
class HiresFix:
    """The web UI's hires fields (`hr_scale`, `hr_resize_x/y`, `hr_upscaler`, `hr_second_pass_steps`,
    `denoising_strength`, `hr_sampler_name`, `hr_prompt`, `hr_negative_prompt`), sdrt's names."""

    scale: float = 2.0
    resize_x: int = 0
    resize_y: int = 0
    upscaler: str = "Latent"
    steps: int = 0                      # 0: as many as the first pass
    denoising_strength: float = 0.7
    scheduler: str | None = None        # sdrt scheduler name; None: the first pass's
    prompt: str | None = None           # None: the first pass's
    negative_prompt: str | None = None


@dataclass(frozen=True)
class Plan:
    """Sizes in pixels: the upscale (cover) size and the final size cropped from its middle."""

    upscale: tuple[int, int]  # (width, height)
    final: tuple[int, int]


def check(hires: HiresFix) -> None:
    """One line for each bad field, before any work."""
    if hires.upscaler not in UPSCALERS:
        raise SdrtError(f"hires upscaler {hires.upscaler!r} is not available here: use one of {', '.join(UPSCALERS)}")
    real_in_range("hires scale (hr_scale)", hires.scale, 1.0, 8.0, "use a factor between 1 and 8 (e.g. 2)")
    real_in_range("denoising_strength", hires.denoising_strength, 0.0, 1.0, "use a value in (0, 1], e.g. 0.7")
    if hires.denoising_strength <= 0:
        raise SdrtError("denoising_strength 0 leaves the hires pass nothing to do: use a value in (0, 1], e.g. 0.7")
    for label, value in (("hr_resize_x", hires.resize_x), ("hr_resize_y", hires.resize_y),
                         ("hr_second_pass_steps", hires.steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SdrtError(f"{label} {value!r} must be a whole number >= 0 (0: not set)")


def plan(hires: HiresFix, width: int, height: int, multiple: int) -> Plan:
    """The web UI's target sizes, rounded down to `multiple` (the model's image size step)."""
    def down(v: float) -> int:
        return max(int(v) // multiple * multiple, multiple)

    rx, ry = hires.resize_x, hires.resize_y
    if not rx and not ry:
        size = (down(width * hires.scale), down(height * hires.scale))
        return Plan(size, size)
    if not ry:
        size = (down(rx), down(rx * height // width))
        return Plan(size, size)
    if not rx:
        size = (down(ry * width // height), down(ry))
        return Plan(size, size)
    if width / height < rx / ry:  # cover the target, then crop its middle
        upscale = (down(rx), down(rx * height // width))
    else:
        upscale = (down(ry * width // height), down(ry))
    final = (min(down(rx), upscale[0]), min(down(ry), upscale[1]))
    return Plan(upscale, final)


def _crop(latents: np.ndarray, final: tuple[int, int], f: int) -> np.ndarray:
    h, w = final[1] // f, final[0] // f
    top, left = (latents.shape[2] - h) // 2, (latents.shape[3] - w) // 2
    return latents[:, :, top:top + h, left:left + w]


def _upscaled_images(images: list, p: Plan, f: int, resample: str) -> list:
    from PIL import Image

    out = []
    for image in images:
        big = image.resize(p.upscale, getattr(Image.Resampling, resample))
        top = (p.upscale[1] // f - p.final[1] // f) // 2 * f
        left = (p.upscale[0] // f - p.final[0] // f) // 2 * f
        out.append(big.crop((left, top, left + p.final[0], top + p.final[1])))
    return out


def second_pass_schedule(steps: int, strength: float) -> tuple[int, float]:
    """(num_inference_steps, strength) that run exactly `steps` steps from `strength` of the schedule
    (the web UI: a schedule of steps / strength, of which the last `steps` run)."""
    total = max(int(steps / min(strength, 0.999)), steps)
    return total, min((steps + 0.5) / total, 1.0)


def generate(pipe: Any, prompt: Any, *, hires: HiresFix, **call: Any) -> Any:
    """txt2img, upscale, img2img (see the module docstring); returns the second pass's output, with the
    first pass's parameters (the web UI's infotext: Size is the first pass's) and a `hires` entry."""
    check(hires)
    if call.get("image") is not None or call.get("mask_image") is not None:
        raise SdrtError("the hires fix follows txt2img: leave out image= and mask_image=")
    if call.get("control_image") is not None:
        raise SdrtError("the hires fix does not run ControlNets yet: leave out the ControlNet units (or enable_hr)")
    if call.get("generator") is not None:
        raise SdrtError("the hires fix re-draws from the call's seeds: pass seed= instead of generator=")
    output_type = call.pop("output_type", "pil")
    callback = call.pop("callback", None)
    f = pipe.vae_scale_factor
    latent = hires.upscaler in LATENT_UPSCALERS
    default = pipe.manifest.default_image_size
    width, height = call.get("width") or default, call.get("height") or default
    pipe.manifest.sizes.check_image_size(height, width)
    p = plan(hires, width, height, pipe.manifest.sizes.image_multiple)
    for size in (p.upscale, p.final):  # before any work: a target the UNet cannot run is one line
        pipe.manifest.sizes.check_image_size(size[1], size[0])
    first = pipe(prompt, output_type="latent" if latent else "pil", callback=callback, **call)
    if latent:
        mode, antialias = LATENT_UPSCALERS[hires.upscaler]
        image = _crop(latent_resize.resize(first.images, p.upscale[1] // f, p.upscale[0] // f, mode, antialias),
                      p.final, f)
    else:
        image = _upscaled_images(first.images, p, f, IMAGE_UPSCALERS[hires.upscaler])
    steps = hires.steps or first.parameters["steps"]
    total, strength = second_pass_schedule(steps, hires.denoising_strength)
    n_images = len(first.seeds)
    prompts = first.parameters["prompt"]
    per_prompt = first.parameters["num_images_per_prompt"]
    expand = lambda texts: [t for t in texts for _ in range(per_prompt)]  # noqa: E731 - one image per row
    hr_prompts = [hires.prompt] * n_images if hires.prompt is not None else expand(prompts)
    hr_negatives = ([hires.negative_prompt] * n_images if hires.negative_prompt is not None
                    else expand(first.parameters["negative_prompt"]))
    kept = {k: v for k, v in call.items() if k in ("guidance_scale", "guidance_rescale", "clip_skip",
                                                    "prompt_syntax", "subseed", "subseed_strength")}
    if "subseed" in kept and first.parameters.get("subseeds"):
        kept["subseed"] = first.parameters["subseeds"]
    second = pipe(hr_prompts, negative_prompt=hr_negatives, image=image, strength=strength,
                  num_inference_steps=total, scheduler=hires.scheduler or call.get("scheduler"), seed=first.seeds,
                  output_type=output_type, callback=callback, **kept)
    parameters = {**first.parameters, "strength": hires.denoising_strength, "hires": {
        "scale": hires.scale, "resize": [hires.resize_x, hires.resize_y] if hires.resize_x or hires.resize_y else None,
        "upscaler": hires.upscaler, "steps": steps, "steps_given": bool(hires.steps),
        "denoising_strength": hires.denoising_strength, "width": p.final[0], "height": p.final[1],
        "scheduler": second.parameters["scheduler"], "sampler": second.parameters.get("sampler"),
        "sampler_given": hires.scheduler is not None and hires.scheduler != call.get("scheduler"),
        "prompt": hires.prompt, "negative_prompt": hires.negative_prompt}}
    second.parameters = parameters
    second.timings.total += first.timings.total
    return second
