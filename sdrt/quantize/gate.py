"""The quality gate: a quantized folder scored against its float source before it is written.

Both folders generate the same fixed prompt x seed set (same initial latents, same scheduler and
steps); the scores compare each quantized image with the float one:

- **PSNR** (dB, pixels in [0, 1]) and **SSIM** (7x7 uniform window, per channel, averaged), the mean
  and the worst image. The gate's bound is on the mean PSNR (`--min-psnr`, default `DEFAULT_MIN_PSNR`).
- on the trained ``shapes`` model (`kind="shapes"`), also the detector's prompt following
  (`sdrt.export.shapes_data.detect`: background, colour and shape of the drawn object): float's and
  the quantized folder's accuracy over the scenes (the quantized one may be at most
  `MAX_ACCURACY_DROP` below), and how many images show the same scene in both (at least
  `MIN_SAME_SCENE` of them).

Scoring runs sdrt's runtime, one pipeline in memory at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sdrt.errors import SdrtError

#: the gate's default bound on the mean PSNR vs the float images (dB); see docs/quantize.md for the measured values
DEFAULT_MIN_PSNR = 20.0
#: shapes: how far the quantized accuracy may fall below float's (fraction), and the same-scene share it needs
MAX_ACCURACY_DROP = 0.05
MIN_SAME_SCENE = 7 / 8
#: the image gate's prompts (not the calibration's: a gate scored on what was calibrated on would flatter)
GATE_PROMPTS = (
    "a red vintage car parked in front of a brick wall",
    "a bowl of ramen with chopsticks, top view, studio lighting",
    "a misty forest with a wooden bridge over a river",
    "a portrait of a woman with curly hair, soft window light",
)
GATE_SEEDS = (1234, 5678)
SHAPES_SEEDS = (7001, 7002, 7003, 7004)


@dataclass(frozen=True)
class GateSet:
    """What every scored folder generates."""

    kind: str  # "images" | "shapes"
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance_scale: float
    size: int

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "prompts": list(self.prompts), "seeds": list(self.seeds), "steps": self.steps,
                "guidance_scale": self.guidance_scale, "height": self.size, "width": self.size}


def shapes_scenes() -> list[Any]:
    """Every colour and shape once, each on the next colour of the palette as background."""
    from sdrt.export import shapes_data

    colours = shapes_data.COLOURS
    return [shapes_data.Scene(c, s, colours[(i + j + 1) % len(colours)])
            for i, c in enumerate(colours) for j, s in enumerate(shapes_data.SHAPES)]


def shapes_calibration_prompts(n: int = 8, seed: int = 99) -> tuple[str, ...]:
    """Captions of random scenes (a fixed draw, not the gate's list) to calibrate the shapes model on."""
    from sdrt.export import shapes_data

    rng = np.random.default_rng(seed)
    return tuple(shapes_data.random_scene(rng).caption for _ in range(n))


def gate_set(kind: str, steps: int, guidance_scale: float, size: int) -> GateSet:
    if kind == "shapes":
        return GateSet(kind, tuple(s.caption for s in shapes_scenes()), SHAPES_SEEDS, steps, guidance_scale, size)
    return GateSet(kind, GATE_PROMPTS, GATE_SEEDS, steps, guidance_scale, size)


def generate(pipe: Any, gates: GateSet, log: Callable[[str], None] = lambda line: None) -> np.ndarray:
    """float32 [prompts x seeds, H, W, 3]: each prompt from each seed's own initial latents."""
    from sdrt.quantize.calibration import image_inputs

    f, c = pipe.vae_scale_factor, pipe.latent_channels
    images = []
    for seed in gates.seeds:
        latents = np.random.default_rng(seed).standard_normal((1, c, gates.size // f, gates.size // f),
                                                              dtype=np.float32)
        extra = image_inputs(pipe, gates.size, seed)  # a refiner's or an inpainting UNet's image (and mask)
        if extra:
            extra["seed"] = seed  # img2img draws its own noise: seeded, the same for both folders
            latents = None
        for prompt in gates.prompts:
            out = pipe(prompt, num_inference_steps=gates.steps, guidance_scale=gates.guidance_scale,
                       height=gates.size, width=gates.size, latents=latents, output_type="np", **extra)
            images.append(out.images[0])
        log(f"  seed {seed}: {len(gates.prompts)} images")
    return np.stack(images)


#: PSNR of identical images (JSON has no infinity)
IDENTICAL_PSNR = 100.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return IDENTICAL_PSNR if mse <= 10 ** (-IDENTICAL_PSNR / 10) else float(10.0 * np.log10(1.0 / mse))


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k x k window (valid positions only) of [H, W, C], by summed-area tables."""
    s = np.pad(np.cumsum(np.cumsum(x, axis=0), axis=1), ((1, 0), (1, 0), (0, 0)))
    return (s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]) / (k * k)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Structural similarity of two [H, W, C] images in [0, 1] (Wang et al. 2004; uniform window,
    sample covariances as scikit-image's default), averaged over positions and channels."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    k = min(window, a.shape[0], a.shape[1])
    k -= (k + 1) % 2  # odd
    c1, c2 = 0.01**2, 0.03**2
    n = k * k
    mu_a, mu_b = _box_mean(a, k), _box_mean(b, k)
    cov = n / (n - 1)
    var_a = cov * (_box_mean(a * a, k) - mu_a**2)
    var_b = cov * (_box_mean(b * b, k) - mu_b**2)
    cov_ab = cov * (_box_mean(a * b, k) - mu_a * mu_b)
    num = (2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def _shapes_scores(reference: np.ndarray, candidate: np.ndarray, gates: GateSet) -> dict[str, Any]:
    from sdrt.export import shapes_data

    scenes = shapes_scenes() * len(gates.seeds)
    found_ref = [shapes_data.detect(im) for im in reference]
    found = [shapes_data.detect(im) for im in candidate]
    same = sum((r.colour, r.shape, r.background) == (q.colour, q.shape, q.background) for r, q in zip(found_ref, found))
    return {"float_accuracy": sum(d.matches(s) for d, s in zip(found_ref, scenes)) / len(scenes),
            "accuracy": sum(d.matches(s) for d, s in zip(found, scenes)) / len(scenes),
            "same_scene": same, "images": len(scenes)}


def score(reference: np.ndarray, candidate: np.ndarray, gates: GateSet, min_psnr: float) -> dict[str, Any]:
    """The report sdrt.json records: scores, bounds and whether they hold."""
    psnrs = [psnr(r, q) for r, q in zip(reference, candidate)]
    ssims = [ssim(r, q) for r, q in zip(reference, candidate)]
    report: dict[str, Any] = {
        "psnr_db_mean": round(float(np.mean(psnrs)), 2),
        "psnr_db_min": round(float(np.min(psnrs)), 2),
        "ssim_mean": round(float(np.mean(ssims)), 4), "ssim_min": round(float(np.min(ssims)), 4),
        "images": len(psnrs), "set": gates.describe(),
        "bounds": {"min_psnr_db": min_psnr},
    }
    failures = []
    if report["psnr_db_mean"] < min_psnr:
        failures.append(f"PSNR {report['psnr_db_mean']:.1f} dB vs float (--min-psnr {min_psnr:g})")
    if gates.kind == "shapes":
        shapes = _shapes_scores(reference, candidate, gates)
        report["shapes"] = shapes
        report["bounds"].update({"max_accuracy_drop": MAX_ACCURACY_DROP, "min_same_scene": MIN_SAME_SCENE})
        drop = shapes["float_accuracy"] - shapes["accuracy"]
        if drop > MAX_ACCURACY_DROP + 1e-9:
            failures.append(f"prompt following {100 * shapes['accuracy']:.1f}% vs float's "
                            f"{100 * shapes['float_accuracy']:.1f}% (at most {100 * MAX_ACCURACY_DROP:g} points lower)")
        if shapes["same_scene"] < MIN_SAME_SCENE * shapes["images"] - 1e-9:
            failures.append(f"the same scene as float in {shapes['same_scene']} of {shapes['images']} images "
                            f"(at least {MIN_SAME_SCENE:.0%})")
    report["passed"] = not failures
    report["failures"] = failures
    return report


def gate_kind(manifest: Any, asked: str) -> str:
    """`auto`: the shapes detector for a folder exported from the trained `shapes` preset, PSNR/SSIM otherwise."""
    if asked != "auto":
        return asked
    name = str((manifest.data.get("source") or {}).get("name") or "")
    return "shapes" if name == "shapes" or name.startswith("src-shapes") else "images"


def open_pipeline(folder: Path, backend: str) -> Any:
    """A Pipeline on `folder` as `Pipeline.load` opens it, without the scheme's backend check: the gate
    scores an fp8 folder on the CPU, where ONNX Runtime runs its Q/DQ pairs in float (FP8's rounding,
    float's arithmetic: the numbers an FP8 GPU computes, up to its accumulation order)."""
    from sdrt.engines.base import backend_class
    from sdrt.manifest import Manifest
    from sdrt.runtime.pipeline import runtime_class
    from sdrt.runtime.tokenizer import ClipTokenizer

    manifest = Manifest.load(folder)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    tokenizers = {name: ClipTokenizer.from_folder(folder / name)
                  for name, _ in manifest.family_spec.text_encoders.values()}
    return runtime_class(manifest.family_spec.runtime)(manifest, backend_class(backend)(), tokenizers, config)


def fail_message(components: dict[str, str], report: dict[str, Any]) -> str:
    named = " + ".join(f"{name} ({scheme})" for name, scheme in components.items())
    return (f"quality gate failed: {named} scored {'; '.join(report['failures'])}: nothing was written; "
            f"keep more in float (quantize fewer --components, or --scheme int8-weights), calibrate on your own "
            f"prompts (--calibration FILE), or pass --accept-quality-loss to write it anyway")


def check(report: dict[str, Any], components: dict[str, str], accept_loss: bool) -> None:
    if not report["passed"] and not accept_loss:
        raise SdrtError(fail_message(components, report))
    if not report["passed"]:
        report["accepted_loss"] = True
