"""Checks of a pipeline call's arguments: each bad value is one line that says what to pass instead."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from sdrt.errors import SdrtError, warn

OUTPUT_TYPES = ("pil", "np", "latent")


def prompt_lists(prompt: str | Sequence[str],
                 negative_prompt: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(prompts, negative prompts of the same length); a single negative prompt serves every prompt."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise SdrtError("prompt must be a string or a non-empty list of strings")
    for p in prompts:
        _check_text("prompt", p)
    if negative_prompt is None:
        return prompts, [""] * len(prompts)
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != len(prompts) or not all(isinstance(n, str) for n in negatives):
        raise SdrtError(f"{len(negatives)} negative prompts for {len(prompts)} prompts: pass one negative "
                        f"prompt for all, or exactly one per prompt")
    for n in negatives:
        _check_text("negative prompt", n)
    return prompts, negatives


def _check_text(label: str, text: str) -> None:
    """Text must be encodable as UTF-8: bytes that were not UTF-8 reach Python's argv as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start].encode("utf-8", "surrogateescape")
        raise SdrtError(f"{label} is not valid UTF-8 (byte {bad!r} at character {e.start}): pass the text in "
                        f"UTF-8 (check the terminal's or the file's encoding)") from None


def warn_unused_negative(negatives: list[str], guidance: float) -> None:
    if guidance <= 1.0 and any(negatives):
        warn(f"the negative prompt is ignored: guidance_scale {guidance:g} <= 1 turns classifier-free guidance "
             f"off; pass --guidance-scale > 1 (e.g. 7.5) to use it")


def _whole(label: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SdrtError(f"{label} {value!r} must be a whole number >= {minimum}")
    return value


def real_in_range(label: str, value: Any, lo: float, hi: float, hint: str) -> float:
    """`value` as a float in [lo, hi], or one line naming `label`, the value and `hint`."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise SdrtError(f"{label} {value!r} is not a number: {hint}") from None
    if isinstance(value, bool) or not math.isfinite(x) or not lo <= x <= hi:
        raise SdrtError(f"{label} {value!r} is out of range: {hint}")
    return x


def check_call(*, num_inference_steps: Any, guidance_scale: Any, strength: Any, num_images_per_prompt: Any,
               output_type: str) -> tuple[int, float, float, int]:
    """Validated (steps, guidance, strength, images per prompt)."""
    steps = _whole("num_inference_steps (--steps)", num_inference_steps, 1)
    guidance = real_in_range("guidance_scale", guidance_scale, 0.0, math.inf,
                     "use a finite value >= 0 (<= 1 turns classifier-free guidance off; 7.5 is usual)")
    strength = real_in_range("strength", strength, 0.0, 1.0, "use a value between 0 and 1 (e.g. 0.8)")
    per_prompt = _whole("num_images_per_prompt (--num-images)", num_images_per_prompt, 1)
    if output_type not in OUTPUT_TYPES:
        raise SdrtError(f"output_type {output_type!r} is not one of: {', '.join(OUTPUT_TYPES)}")
    return steps, guidance, strength, per_prompt


def check_latents(latents: Any, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(latents, dtype=np.float32)
    if array.shape != shape:
        raise SdrtError(f"latents have shape {tuple(array.shape)}, this call needs {shape} "
                        f"(images, latent channels, height / f, width / f)")
    return array


def check_pair(label: str, value: Any) -> tuple[int, int] | None:
    """None, or (height, width)-style pairs of two non-negative whole numbers (SDXL's size conditioning)."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else None
    if (items is None or len(items) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in items)):
        raise SdrtError(f"{label} {value!r} must be two non-negative whole numbers (height, width), e.g. (1024, 1024)")
    return int(items[0]), int(items[1])


def check_fraction(label: str, value: Any) -> float | None:
    """None, or a number strictly between 0 and 1 (denoising_start / denoising_end)."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not 0.0 < x < 1.0:
        raise SdrtError(f"{label} {value!r} must be strictly between 0 and 1 (e.g. 0.8), or left out")
    return x


def check_extras(*, guidance_rescale: Any, clip_skip: Any) -> tuple[float, int | None]:
    rescale = real_in_range("guidance_rescale", guidance_rescale, 0.0, 1.0, "use a value between 0 and 1 (0.7 is usual)")
    if clip_skip is not None:
        clip_skip = _whole("clip_skip", clip_skip, 0)
    return rescale, clip_skip


def check_family_arguments(family: str, folder: Any, given: dict[str, Any]) -> None:
    """SDXL-only arguments (its second prompt, its size conditioning) on a family without them: one
    line naming the argument."""
    for key, value in given.items():
        if value is not None:
            raise SdrtError(f"{key} is an SDXL argument; {folder} is a {family} model "
                            f"(family {family!r} in sdrt.json): leave {key} out")
