"""The two kinds of contender a benchmark times: an sdrt backend, and the diffusers reference.

Both are loaded and called the same way — ``load()`` (timed as load time), then
``__call__(latents)`` returning images (float32 [N, H, W, 3] in [0, 1]) and the call's stage
timings — so the measuring loop in ``runner`` has no special cases. Only the reference imports
torch, and only when it loads.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.bench.results import CallTimes


@dataclass(frozen=True)
class Generation:
    """What every call of a benchmark generates: the same for every contender."""

    prompt: str
    steps: int
    guidance_scale: float
    height: int
    width: int
    batch: int
    scheduler: str | None
    latents: np.ndarray


@dataclass
class SdrtContender:
    """The torch-free pipeline on one backend."""

    folder: Path
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "sdrt"
    pipe: Any = None
    label: str | None = None  # how the suite named it ("ort-cuda:cuda_graph"); default: the backend

    @property
    def name(self) -> str:
        if self.label:
            return f"sdrt {self.label}"
        precision = self.options.get("precision")
        return f"sdrt {self.backend}" + (f" {precision}" if precision else "")

    @property
    def device_backend(self) -> str:
        return self.pipe.backend_name if self.pipe is not None else self.backend

    def precision(self) -> str:
        from sdrt.manifest import Manifest

        manifest = Manifest.load(self.folder)
        return self.options.get("precision") or manifest.precision(manifest.family_spec.denoiser)

    def prepare(self) -> None:
        """Nothing to fetch: the ONNX folder is there."""

    def load(self) -> None:
        from sdrt.runtime.pipeline import Pipeline

        self.pipe = Pipeline.load(self.folder, self.backend, **self.options)

    def __call__(self, gen: Generation) -> tuple[np.ndarray, CallTimes, dict[str, Any]]:
        start = time.perf_counter()
        out = self.pipe(gen.prompt, num_inference_steps=gen.steps, guidance_scale=gen.guidance_scale,
                        height=gen.height, width=gen.width, num_images_per_prompt=gen.batch,
                        latents=gen.latents, scheduler=gen.scheduler, output_type="np", seed=0)
        elapsed = time.perf_counter() - start
        return np.asarray(out.images), CallTimes.from_stage_timings(out.timings, elapsed), out.parameters

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
        self.pipe = None
        gc.collect()


@dataclass
class ReferenceContender:
    """diffusers' pipeline on the source weights, loaded from a local diffusers folder."""

    folder: Path  # the ONNX folder (its sdrt.json names the source)
    device: str = "cpu"
    dtype_name: str = "fp32"
    kind: str = "reference"
    ref: Any = None
    source: Path | None = None
    vae_tiling: bool = False  # diffusers' vae.enable_tiling() (its default tile: the VAE's sample_size)
    without: tuple[str, ...] = ()  # components loaded as None (text_encoder_3: SD3 without T5)

    uses_torch = True

    def __post_init__(self) -> None:
        if self.dtype_name == "bf16":  # fp32 weights under torch.autocast(bfloat16): a peer of sdrt's bf16
            self.kind = "peer"

    @property
    def name(self) -> str:
        how = "bf16 autocast" if self.dtype_name == "bf16" else self.dtype_name
        return f"diffusers (torch {self.device}, {how}{', VAE tiling' if self.vae_tiling else ''})"

    @property
    def device_backend(self) -> str:
        return f"torch-{self.device}"

    def precision(self) -> str:
        return self.dtype_name

    def prepare(self) -> None:
        """Write a preset's weights as a diffusers folder once (untimed), so load is from_pretrained."""
        from sdrt.bench.models import reference_source
        from sdrt.manifest import Manifest

        self.source = reference_source(Manifest.load(self.folder))

    def load(self) -> None:
        import diffusers
        import torch
        import transformers

        for library in (diffusers, transformers):  # their progress bars and advice are noise here
            library.utils.logging.set_verbosity_error()
            library.utils.logging.disable_progress_bar()

        from sdrt.manifest import Manifest
        from sdrt.reference import Reference

        manifest = Manifest.load(self.folder)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.float32}[self.dtype_name]
        source = self.source
        cls = getattr(diffusers, manifest.pipeline.get("class_name") or "StableDiffusionPipeline")
        pipe = cls.from_pretrained(source, dtype=dtype, safety_checker=None,
                                   requires_safety_checker=False, local_files_only=True,
                                   **{name: None for name in self.without})
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        self.ref = Reference(pipe, manifest.folder, device=self.device)

    def __call__(self, gen: Generation) -> tuple[np.ndarray, CallTimes, dict[str, Any]]:
        import contextlib

        import torch

        autocast = (torch.autocast(self.device, dtype=torch.bfloat16) if self.dtype_name == "bf16"
                    else contextlib.nullcontext())
        start = time.perf_counter()
        with autocast:
            out = self.ref(gen.prompt, num_inference_steps=gen.steps, guidance_scale=gen.guidance_scale,
                           height=gen.height, width=gen.width, num_images_per_prompt=gen.batch,
                           latents=gen.latents, scheduler=gen.scheduler, seed=0)
        elapsed = time.perf_counter() - start
        return np.asarray(out.images), CallTimes.from_stage_timings(out.timings, elapsed), {}

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def close(self) -> None:
        self.ref = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two image arrays in [0, 1] (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"cannot compare images of shapes {a.shape} and {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))
