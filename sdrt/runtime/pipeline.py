"""The torch-free Stable Diffusion pipeline: txt2img, img2img and inpainting on any engine backend.

It reproduces diffusers' StableDiffusionPipeline / Img2Img / Inpaint numbers (same tokenizer ids,
same scheduler maths, same pre- and post-processing), with numpy around the engines:

- text embeddings are computed once per call and stay bound in the UNet's `encoder_hidden_states`;
- each denoising step writes the latents into the bound `sample` buffer (and the step's timestep
  into `timestep`), runs, and reads the bound `out_sample` buffer: no engine buffer is allocated in
  the loop (the engines allocate once per shape set);
- classifier-free guidance (guidance_scale > 1) runs the unconditional half first in one batch;
- latent channels, VAE scale factor, scaling factor and the default size come from `sdrt.json`.

Randomness: with `seed` (an int s, or one int per image) each image i has its own numpy generator
(seed s + i, see `seeds.py`) for all of its draws, so any image of a batch is reproduced by a
one-image call with its seed. With `generator=` one caller-supplied generator serves the whole
call, drawn in diffusers' order (VAE sample of the image, the initial noise, VAE sample of the
masked image, then the sampler's own draws): an object with numpy's `standard_normal(size, dtype=)`
that replays torch's draws gives diffusers' result with a torch generator of the same seed (how the
parity tests work).

Threads: a Pipeline may be called from many threads at once. Its engines own one set of bound
buffers each (allocated per shape, reused across calls), so calls are serialized by a per-Pipeline
lock; every call then gets exactly the result it would get alone. Parallel calls on one GPU would
need per-call buffers or a pool of engine contexts per thread -- future work (it multiplies device
memory, and one CPU call already uses every core through ONNX Runtime's intra-op threads).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sdrt.engines.base import Backend, Engine, backend_class, candidates, with_precision
from sdrt.errors import EngineMissing, SdrtError
from sdrt.manifest import Manifest
from sdrt.runtime import conditioning, images as imageio, memory_guard, metadata
from sdrt.runtime.arguments import check_call, check_latents, prompt_lists, warn_unused_negative
from sdrt.runtime.seeds import PerImageGenerator, image_seeds
from sdrt.runtime.timing import StageTimings

#: Scheduler config values each diffusers pipeline overrides in its __init__ (for old checkpoints'
#: configs), by mode: key -> (is it outdated?, the value diffusers uses instead). They differ:
#: the inpaint pipeline keeps clip_sample but forces skip_prk_steps.
_STEPS_OFFSET = ("steps_offset", (lambda v: v != 1, 1))
SCHEDULER_CONFIG_FIXES: dict[str, dict[str, tuple[Callable[[Any], bool], Any]]] = {
    "txt2img": dict([_STEPS_OFFSET, ("clip_sample", (lambda v: v is True, False))]),
    "img2img": dict([_STEPS_OFFSET, ("clip_sample", (lambda v: v is True, False))]),
    "inpaint": dict([_STEPS_OFFSET, ("skip_prk_steps", (lambda v: v is False, True))]),
}

#: what a callback receives after each denoising step: (step index, timestep, latents [N, C, h, w])
StepCallback = Callable[[int, Any, np.ndarray], None]


@dataclass
class PipelineOutput:
    """`images`: PIL images, or float32 [N, H, W, 3] in [0, 1] for output_type="np".

    `seeds[i]` regenerates image i alone; `seed` is the first (None when a generator was passed)."""

    images: Any
    seed: int | None
    timings: StageTimings
    parameters: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None


class Pipeline:
    """Engines for one ONNX model folder, and the call that turns prompts into images."""

    def __init__(self, manifest: Manifest, backend: Backend, tokenizer: Any, scheduler_config: dict[str, Any]):
        self.manifest = manifest
        self.backend = backend
        self.tokenizer = tokenizer
        self.scheduler_config = scheduler_config
        p = manifest.pipeline
        if p.get("scaling_factor") is None:
            raise SdrtError(f"{manifest.folder}/sdrt.json lacks pipeline.scaling_factor: export the model again "
                            f"with --force")
        self.scaling_factor = float(p["scaling_factor"])
        self.shift_factor = float(p.get("shift_factor") or 0.0)
        self.vae_scale_factor = int(p["vae_scale_factor"])
        self.latent_channels = int(p["latent_channels"])
        self.unet_in_channels = int(p["unet_in_channels"])
        self.engines: dict[str, Engine] = {}
        self._unet_config = memory_guard.unet_config(manifest.folder)  # for the memory estimate
        self._lock = threading.RLock()  # one call at a time: the engines' bound buffers are shared
        try:
            for component in ("text_encoder", "unet", "vae_decoder"):  # fail early on a broken folder
                self.engine(component)
        except BaseException:
            self.close()
            raise
        from sdrt.runtime.lora import Adapters

        self.adapters = Adapters(manifest)

    @classmethod
    def load(cls, folder: str | os.PathLike, backend: str = "auto", precision: str | None = None,
             verify: bool = False, loras: Sequence[Any] = (), **backend_options: Any) -> "Pipeline":
        """Open an exported folder on a backend; options go to the backend (its declared ones only).
        ``precision``: f32 | bf16 | f16, the run-time precision (bf16/f16: openvino only).

        "auto" tries the usable backends that take the options, fastest first; one without a built
        engine for this folder (TensorRT before `sdrt build`, unless auto_build=True) is skipped
        with a one-line note on stderr. `verify=True` first checks every component's sha256 against
        the one export recorded (reads every weight once; a changed file is one line naming it). `loras`: LoRA files to apply, each a path or a (path, scale)
        pair (see `set_loras`).
        """
        from sdrt.runtime.tokenizer import ClipTokenizer

        manifest = Manifest.load(folder)
        if verify:
            manifest.verify()
        config_path = Path(folder) / "scheduler" / "scheduler_config.json"
        try:
            scheduler_config = json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise SdrtError(f"{config_path} is missing or unreadable ({e}): export the model again with --force")
        tokenizer = ClipTokenizer.from_folder(Path(folder) / "tokenizer")
        backend_options = with_precision(precision, backend_options)
        names = candidates(backend, backend_options)
        for i, name in enumerate(names):
            try:
                options = with_precision(precision, backend_options, backend_class(name))
                pipe = cls(manifest, backend_class(name)(**options), tokenizer, scheduler_config)
            except EngineMissing as e:
                if i + 1 == len(names):
                    raise
                print(f"sdrt: backend auto: not {name} ({e}); using {names[i + 1]}", file=sys.stderr, flush=True)
                continue
            break
        else:
            raise AssertionError("unreachable: candidates() returns at least one backend")
        if loras:
            try:
                pipe.set_loras(loras)
            except BaseException:
                pipe.close()
                raise
        return pipe

    def set_loras(self, loras: Sequence[Any]) -> None:
        """Apply exactly these LoRAs ((path, scale) pairs or paths, scale 1), merged into the text
        encoder's and UNet's weights without re-export; [] restores the exported weights exactly.
        A file that does not fit is a one-line error and leaves the pipeline as it was."""
        with self._lock:  # never while a call runs on the engines being swapped
            self.adapters.apply(self.backend, self.engines, list(loras))

    @property
    def loras(self) -> list[dict[str, Any]]:
        """The applied LoRAs: name, path, scale, A1111 short hash, format."""
        return [lora.as_dict() for lora in self.adapters.active]

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def inpainting_unet(self) -> bool:
        """A 9-channel UNet: latents + mask + masked-image latents."""
        return self.unet_in_channels != self.latent_channels

    def engine(self, component: str) -> Engine:
        if component not in self.engines:
            self.engines[component] = self.backend.load(self.manifest, component)
        return self.engines[component]

    def close(self) -> None:
        """Free the engines, then what the backend shares (TensorRT's stream and activation block)."""
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()
        self.backend.close()

    # -- stages ----------------------------------------------------------------------------------
    def make_scheduler(self, scheduler: Any = None, mode: str = "txt2img") -> Any:
        """A fresh scheduler: the folder's own, one by name (its config on top of the folder's) or a config,
        with the config fixes diffusers' pipeline of this mode applies."""
        if scheduler is not None and hasattr(scheduler, "set_timesteps"):
            return scheduler
        from sdrt.runtime.schedulers import get_scheduler

        made = get_scheduler(self.scheduler_config if scheduler is None else scheduler, self.scheduler_config)
        fixes = {key: value
                 for key, (outdated, value) in SCHEDULER_CONFIG_FIXES[mode].items()
                 if key in made.config and outdated(made.config[key])}
        return type(made).from_config({**made.config, **fixes}) if fixes else made

    def encode_prompts(self, prompts: list[str], negatives: list[str], per_prompt: int, guidance: bool) -> np.ndarray:
        """[UNet batch, S, D] text embeddings: unconditional first under guidance, each repeated per image."""
        texts = negatives + prompts if guidance else prompts
        ids = self.tokenizer(texts)
        engine = self.engine("text_encoder")
        engine.prepare({"B": len(texts)})
        hidden = engine.run({"input_ids": ids})["last_hidden_state"]
        return np.repeat(hidden, per_prompt, axis=0)

    def encode_images(self, pixels: np.ndarray, rng: Any) -> np.ndarray:
        """[k, 3, H, W] in [-1, 1] -> sampled, scaled latents [k, C, h, w] ([n, ...] for n per-image
        generators: each image samples its copy of the encoding from its own generator)."""
        engine = self.engine("vae_encoder")
        f = self.vae_scale_factor
        engine.prepare({"B": pixels.shape[0], "h": pixels.shape[2] // f, "w": pixels.shape[3] // f})
        parameters = engine.run({"sample": pixels})["latent_parameters"]
        if isinstance(rng, PerImageGenerator):
            parameters = conditioning.tile_to(parameters, len(rng), "image")
        return self.scaling_factor * (conditioning.sample_latents(parameters, rng) - self.shift_factor)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> float32 [N, H, W, 3] in [0, 1]; NaN or inf is an error that names the culprit."""
        if not np.isfinite(latents).all():
            raise SdrtError(f"the UNet ({self.manifest.precision('unet')}) produced NaN or inf latents: "
                            f"export the UNet in fp32, or lower guidance_scale")
        engine = self.engine("vae_decoder")
        engine.prepare({"B": latents.shape[0], "h": latents.shape[2], "w": latents.shape[3]})
        decoded = engine.run({"latent_sample": latents / self.scaling_factor + self.shift_factor})["sample"]
        if not np.isfinite(decoded).all():
            raise SdrtError(f"the VAE decoder ({self.manifest.precision('vae_decoder')}) produced NaN or inf "
                            f"pixels: export the VAE decoder in fp32 (fp16 VAEs overflow)")
        return imageio.postprocess(decoded)

    # -- the call --------------------------------------------------------------------------------
    def _inputs(self, image: Any, mask_image: Any) -> tuple[list, list]:
        if mask_image is not None and image is None:
            raise SdrtError("mask_image (--mask) needs an image (--image) to inpaint")
        if self.inpainting_unet and (image is None or mask_image is None):
            raise SdrtError(f"{self.manifest.folder} has an inpainting UNet: pass an image (--image) "
                            f"and a mask (--mask)")
        images = imageio.load_images(image, "image") if image is not None else []
        masks = imageio.load_images(mask_image, "mask") if mask_image is not None else []
        return images, masks

    def _size(self, height: int | None, width: int | None, images: list, masks: list) -> tuple[int, int]:
        """Output size: given, else the input image's, else the model's default (sample_size x f)."""
        default_w, default_h = images[0].size if images else (self.manifest.default_image_size,) * 2
        height = default_h if height is None else height
        width = default_w if width is None else width
        self.manifest.sizes.check_image_size(height, width)
        imageio.check_size(images, height, width, "image")
        imageio.check_size(masks, height, width, "mask")
        return height, width

    def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, height: int | None = None,
                 width: int | None = None, num_images_per_prompt: int = 1, seed: int | Sequence[int] | None = None,
                 latents: np.ndarray | None = None, scheduler: Any = None, image: Any = None, strength: float = 0.8,
                 mask_image: Any = None, output_type: str = "pil", callback: StepCallback | None = None,
                 generator: Any = None) -> PipelineOutput:
        """Generate; safe from many threads (calls run one at a time, see the module docstring).

        `seed`: an int s (image i uses s + i), one int per image, or None / -1 for a random one."""
        with self._lock:
            try:
                return self._generate(
                    prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                    num_images_per_prompt, seed, latents, scheduler, image, strength, mask_image, output_type,
                    callback, generator)
            except SdrtError:
                raise
            except Exception as e:  # an engine's own exception types (onnxruntime, CUDA, TensorRT)
                if not memory_guard.is_allocation_failure(e):
                    raise
                n = (1 if isinstance(prompt, str) else len(prompt)) * num_images_per_prompt
                raise memory_guard.allocation_failure(e, self.backend_name, height, width, n) from None

    def _generate(self, prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                  num_images_per_prompt, seed, latents, scheduler, image, strength, mask_image, output_type,
                  callback, generator) -> PipelineOutput:
        t_call = time.perf_counter()
        timings = StageTimings()
        steps, guidance, strength, per_prompt = check_call(
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, strength=strength,
            num_images_per_prompt=num_images_per_prompt, output_type=output_type)
        prompts, negatives = prompt_lists(prompt, negative_prompt)
        warn_unused_negative(negatives, guidance)
        images, masks = self._inputs(image, mask_image)
        height, width = self._size(height, width, images, masks)
        n = len(prompts) * per_prompt
        if generator is None:
            seeds = image_seeds(seed, n)
            seed, rng = seeds[0], PerImageGenerator(seeds)
        else:
            seeds, seed, rng = None, None, generator  # the caller's generator: its seed is not ours to report
        cfg = guidance > 1.0
        f, C = self.vae_scale_factor, self.latent_channels
        h, w = height // f, width // f
        noise = check_latents(latents, (n, C, h, w)) if latents is not None else None

        with timings.measure("text_encoder"):
            embeddings = self.encode_prompts(prompts, negatives, per_prompt, cfg)

        mode = "inpaint" if masks else "img2img" if images else "txt2img"
        sched = self.make_scheduler(scheduler, mode)
        sched.set_timesteps(steps)
        timesteps = np.asarray(sched.timesteps)
        if images:
            begin, remaining = conditioning.start_index(steps, strength, sched.order)
            if remaining < 1:
                raise SdrtError(f"strength {strength} with {steps} steps leaves no denoising step: "
                                f"raise the strength or the number of steps")
            timesteps = timesteps[begin:]
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(begin)

        # -- initial latents and conditioning (diffusers' order of random draws) ------------------
        mask_lat = masked_lat = image_lat = None
        blend = bool(masks) and not self.inpainting_unet
        pixels = imageio.images_to_array(images) if images else None
        if masks:
            mask_px = conditioning.tile_to(imageio.masks_to_array(masks), len(images), "mask")
            mask_lat = conditioning.tile_to(conditioning.mask_latents(mask_px, f), n, "mask")
        with timings.measure("vae_encoder"):
            if images and (not masks or blend or strength < 1.0):
                image_lat = conditioning.tile_to(self.encode_images(pixels, rng), n, "image")
            if noise is None:
                noise = rng.standard_normal((n, C, h, w), dtype=np.float32)
            if self.inpainting_unet:
                masked = conditioning.masked_pixels(pixels, mask_px)
                masked_lat = conditioning.tile_to(self.encode_images(masked, rng), n, "image")
        if image_lat is None or (masks and strength == 1.0):
            x = noise * np.float32(sched.init_noise_sigma)
        else:
            x = sched.add_noise(image_lat, noise, np.repeat(timesteps[:1], n))
        x = np.asarray(x, dtype=np.float32)

        # -- the denoising loop: bound buffers, nothing allocated in the engines -------------------
        unet = self.engine("unet")
        batch = 2 * n if cfg else n
        memory_guard.check_fits(self.backend_name, self._unet_config, batch, height, width, f, n)
        unet.prepare({"B": batch, "h": h, "w": w})
        unet.set_input("encoder_hidden_states", embeddings)
        model_in = np.zeros((batch, self.unet_in_channels, h, w), dtype=np.float32)
        if masked_lat is not None:
            halves = 2 if cfg else 1
            model_in[:, C:C + 1] = np.concatenate([mask_lat] * halves)
            model_in[:, C + 1:] = np.concatenate([masked_lat] * halves)
        t_in = np.zeros((batch,), dtype=np.float32)
        for i, t in enumerate(timesteps):
            t0 = time.perf_counter()
            scaled = sched.scale_model_input(x, t)
            model_in[:n, :C] = scaled
            if cfg:
                model_in[n:, :C] = scaled
            t_in.fill(t)
            t1 = time.perf_counter()
            out = unet.run({"sample": model_in, "timestep": t_in})["out_sample"]
            t2 = time.perf_counter()
            if cfg:  # views (no copy for fp32 engines); the guidance formula makes a new array
                uncond = out[:n].astype(np.float32, copy=False)
                text = out[n:].astype(np.float32, copy=False)
                noise_pred = uncond + guidance * (text - uncond)
            else:
                noise_pred = out.astype(np.float32)  # a copy: the engine overwrites `out` next step
            x = sched.step(noise_pred, t, x, generator=rng).prev_sample
            if blend:
                proper = image_lat
                if i < len(timesteps) - 1:
                    proper = sched.add_noise(image_lat, noise, timesteps[i + 1:i + 2])
                x = (1 - mask_lat) * proper + mask_lat * x
            if callback is not None:
                callback(i, t, x)
            timings.unet_steps.append(t2 - t1)
            timings.host_steps.append(time.perf_counter() - t0 - (t2 - t1))

        with timings.measure("vae_decoder"):
            result = self.decode(np.asarray(x, dtype=np.float32))
        timings.total = time.perf_counter() - t_call
        parameters = {
            "mode": mode,
            "prompt": prompts, "negative_prompt": negatives, "steps": steps, "guidance_scale": guidance,
            "scheduler": type(sched).__name__, "seed": seed, "seeds": seeds, "height": height, "width": width,
            "num_images_per_prompt": per_prompt, "backend": self.backend_name,
            # what the UNet computes in: the backend's run-time precision, else the exported one
            "runtime_precision": self.backend.runtime_precision or self.manifest.precision("unet"),
            "model": self.manifest.data.get("source", {}).get("name") or str(self.manifest.folder),
        }
        parameters.update(metadata.describe(self.manifest, sched, images, masks))
        if self.adapters.active:
            parameters["loras"] = self.loras
        if images:
            parameters["strength"] = strength
        images_out = imageio.to_pil(result) if output_type == "pil" else result
        return PipelineOutput(images_out, seed, timings, parameters, seeds)
