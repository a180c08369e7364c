"""Calibration data: the inputs each component really sees, recorded while sdrt's own runtime generates.

A `Recorder` wraps a loaded engine (the runtime's `Engine` surface: prepare / set_input / run) and
keeps a copy of every input the engine holds when it runs: for the UNet, one sample per denoising
step (latents, timestep, text embeddings, SDXL's added conditioning), across the timesteps of real
generations, as Model Optimizer's diffusion recipes collect them. Nothing of the denoising loop is
copied here: the pipeline runs as it always does, with the recorder in place of its engine.

The prompts come from a text file (one prompt per line, `--calibration`) or the built-in set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sdrt.errors import SdrtError

#: the built-in calibration prompts: varied subjects, styles and lighting (a user's own file fits their use better)
DEFAULT_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a watercolour painting of a lighthouse on a cliff at sunset",
    "a close-up portrait of an old fisherman, dramatic lighting",
    "a bowl of fruit on a wooden table, still life, oil painting",
    "a futuristic city street at night with neon signs, rain",
    "a snowy mountain landscape with a frozen lake, morning light",
    "a cute corgi puppy sitting in a field of flowers",
    "an isometric pixel-art illustration of a cozy cabin interior",
)


@dataclass(frozen=True)
class CalibrationSet:
    """What the calibration ran: recorded in sdrt.json (`quantization.calibration`)."""

    prompts: tuple[str, ...]
    source: str  # the file's path, or "built-in"
    steps: int
    guidance_scale: float
    size: int
    seed: int

    def describe(self, samples: int) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()
        return {"prompts": len(self.prompts), "prompts_sha256": digest, "source": self.source, "steps": self.steps,
                "guidance_scale": self.guidance_scale, "height": self.size, "width": self.size, "seed": self.seed,
                "samples": samples}


def read_prompts(path: str | Path | None) -> tuple[tuple[str, ...], str]:
    """(prompts, where they came from): one prompt per non-blank line of `path`, or the built-in set."""
    if path is None:
        return DEFAULT_PROMPTS, "built-in"
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise SdrtError(f"calibration file {path} is unreadable ({reason}): pass a UTF-8 text file with one "
                        f"prompt per line") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not prompts:
        raise SdrtError(f"calibration file {path} holds no prompt: write one prompt per line (a few dozen "
                        f"like the prompts you will generate), or leave --calibration out for the built-in set")
    return prompts, str(path)


class Recorder:
    """An engine that runs as the one it wraps and keeps a copy of its inputs at every run."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.current: dict[str, np.ndarray] = {}
        self.samples: list[dict[str, np.ndarray]] = []

    def __getattr__(self, name: str) -> Any:  # precision, spec, buffers, dims, ...: the wrapped engine's
        return getattr(self.engine, name)

    def prepare(self, dims: Mapping[str, int]) -> None:
        self.engine.prepare(dims)

    def set_input(self, name: str, array: np.ndarray) -> None:
        self.current[name] = np.array(array, dtype=np.float32 if np.asarray(array).dtype.kind == "f" else None,
                                      copy=True)
        self.engine.set_input(name, array)

    def execute(self) -> dict[str, np.ndarray]:
        self.samples.append(dict(self.current))  # the arrays were copied on set_input; runs share unchanged ones
        return self.engine.execute()

    def run(self, feeds: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        for name, array in (feeds or {}).items():
            self.set_input(name, array)
        return self.execute()

    def close(self) -> None:
        self.engine.close()


def image_inputs(pipe: Any, size: int, seed: int) -> dict[str, np.ndarray]:
    """What a pipeline that cannot draw from a prompt alone needs: an image (a refiner; an inpainting UNet)
    and a mask (the inpainting UNet: its centre), smooth random colours so every channel carries signal."""
    if not (pipe.inpainting_unet or not pipe.family_spec.txt2img):
        return {}
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (4, 4, 3))
    image = np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1, 1)))[:size, :size].astype(np.uint8)
    inputs = {"image": image}
    if pipe.inpainting_unet:
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
        inputs["mask_image"] = mask
    return inputs


def collect(pipe: Any, components: list[str], calibration: CalibrationSet,
            log: Any = lambda line: None) -> dict[str, list[dict[str, np.ndarray]]]:
    """Generate every calibration prompt on `pipe` (a float folder's Pipeline) with a recorder on each of
    `components`; component -> its recorded input samples (one per engine run)."""
    recorders = {name: Recorder(pipe.engine(name)) for name in components}
    originals = {name: pipe.engines[name] for name in components}
    pipe.engines.update(recorders)
    try:
        for i, prompt in enumerate(calibration.prompts):
            log(f"calibration {i + 1}/{len(calibration.prompts)}: {prompt!r}")
            pipe(prompt, num_inference_steps=calibration.steps, guidance_scale=calibration.guidance_scale,
                 height=calibration.size, width=calibration.size, seed=calibration.seed + i, output_type="np",
                 **image_inputs(pipe, calibration.size, calibration.seed + i))
    finally:
        pipe.engines.update(originals)
    return {name: recorder.samples for name, recorder in recorders.items()}
