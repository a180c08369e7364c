"""The torch-free Stable Diffusion pipeline: txt2img, img2img and inpainting on any engine backend.

It reproduces diffusers' StableDiffusion(XL)Pipeline / Img2Img / Inpaint and
LatentConsistencyModelPipeline numbers (same tokenizer ids, same scheduler maths, same pre- and
post-processing), with numpy around the engines, for every model family of `sdrt.spec`:
SD 1.x/2.x, SDXL base (and Turbo), the SDXL refiner, LCM-distilled UNets. Text conditioning lives
in `prompts`, SDXL's time ids and LCM's guidance embedding in `added_conditioning`, the loop in
`denoise`; this module checks the call, prepares the latents and ties them together.

- text embeddings are computed once per call and stay bound in the UNet's `encoder_hidden_states`;
- each denoising step writes the latents into the bound `sample` buffer (and the step's timestep
  into `timestep`), runs, and reads the bound `out_sample` buffer: no engine buffer is allocated in
  the loop (the engines allocate once per shape set);
- classifier-free guidance (guidance_scale > 1) runs the unconditional half first in one batch
  (LCM-distilled UNets take the guidance scale as the `timestep_cond` embedding instead);
- `denoising_end` stops a base model early and `output_type="latent"` returns its latents, which a
  refiner continues from with `image=latents, denoising_start=...` (diffusers' ensemble of experts);
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
from sdrt.runtime import (added_conditioning, conditioning, images as imageio, memory_guard, metadata,
                          prompts as text, vae_tiling as tiling)
from sdrt.runtime.arguments import (check_call, check_extras, check_family_arguments, check_fraction,
                                    check_latents, prompt_lists, warn_unused_negative)
from sdrt.runtime.denoise import Blend, StepCallback, cut_timesteps_end, denoise, start_at
from sdrt.runtime.seeds import PerImageGenerator, image_seeds
from sdrt.runtime.timing import StageTimings
from sdrt.spec import N

#: Scheduler config values each diffusers pipeline overrides in its __init__ (for old checkpoints'
#: configs), by mode: key -> (is it outdated?, the value diffusers uses instead). They differ:
#: the inpaint pipeline keeps clip_sample but forces skip_prk_steps.
_STEPS_OFFSET = ("steps_offset", (lambda v: v != 1, 1))
SCHEDULER_CONFIG_FIXES: dict[str, dict[str, tuple[Callable[[Any], bool], Any]]] = {
    "txt2img": dict([_STEPS_OFFSET, ("clip_sample", (lambda v: v is True, False))]),
    "img2img": dict([_STEPS_OFFSET, ("clip_sample", (lambda v: v is True, False))]),
    "inpaint": dict([_STEPS_OFFSET, ("skip_prk_steps", (lambda v: v is False, True))]),
}

#: diffusers' default strength per family and mode (SDXL's img2img is meant for refining)
DEFAULT_STRENGTH = {"img2img": {"sd": 0.8, "sdxl": 0.3, "sdxl-refiner": 0.3},
                    "inpaint": {"sd": 0.8, "sdxl": 0.9999, "sdxl-refiner": 0.9999}}
SDXL_FAMILIES = ("sdxl", "sdxl-refiner")


@dataclass
class PipelineOutput:
    """`images`: PIL images, float32 [N, H, W, 3] in [0, 1] for output_type="np", or the final latents
    [N, C, h, w] for output_type="latent" (what a refiner's `image` takes).

    `seeds[i]` regenerates image i alone; `seed` is the first (None when a generator was passed)."""

    images: Any
    seed: int | None
    timings: StageTimings
    parameters: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None


class Pipeline:
    """Engines for one ONNX model folder, and the call that turns prompts into images."""

    def __init__(self, manifest: Manifest, backend: Backend, tokenizer: Any, scheduler_config: dict[str, Any],
                 tokenizer_2: Any = None):
        self.manifest = manifest
        self.backend = backend
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2  # SDXL's second (OpenCLIP) tokenizer
        self.scheduler_config = scheduler_config
        self.family = manifest.family
        self.model_spec = manifest.spec
        p = manifest.pipeline
        if p.get("scaling_factor") is None:
            raise SdrtError(f"{manifest.folder}/sdrt.json lacks pipeline.scaling_factor: export the model again "
                            f"with --force")
        self.scaling_factor = float(p["scaling_factor"])
        self.shift_factor = float(p.get("shift_factor") or 0.0)
        self.vae_scale_factor = int(p["vae_scale_factor"])
        self.latent_channels = int(p["latent_channels"])
        self.unet_in_channels = int(p["unet_in_channels"])
        self.time_cond_dim = self.manifest.values.get("G") if "timestep_cond" in self.model_spec.variants else None
        self.engines: dict[str, Engine] = {}
        self._unet_config = memory_guard.unet_config(manifest.folder)  # for the memory estimate
        self._lock = threading.RLock()  # one call at a time: the engines' bound buffers are shared
        self.vae_tiles: tiling.VaeTiles | None = None  # None: decode whole (see enable_vae_tiling)
        try:
            for component in (*self.model_spec.text_encoders, "unet", "vae_decoder"):  # fail early on a broken folder
                self.engine(component)
        except BaseException:
            self.close()
            raise
        from sdrt.runtime.lora import Adapters

        self.adapters = Adapters(manifest)

    @classmethod
    def load(cls, folder: str | os.PathLike, backend: str = "auto", precision: str | None = None,
             verify: bool = False, loras: Sequence[Any] = (), vae_tiling: bool = False,
             vae_tile_size: int | None = None, **backend_options: Any) -> "Pipeline":
        """Open an exported folder on a backend; options go to the backend (its declared ones only).
        ``precision``: f32 | bf16 | f16, the run-time precision (bf16/f16: openvino only).

        "auto" tries the usable backends that take the options, fastest first; one without a built
        engine for this folder (TensorRT before `sdrt build`, unless auto_build=True) is skipped
        with a one-line note on stderr. `verify=True` first checks every component's sha256 against
        the one export recorded (reads every weight once; a changed file is one line naming it). `loras`: LoRA files to apply, each a path or a (path, scale)
        pair (see `set_loras`). `vae_tiling` / `vae_tile_size`: see `enable_vae_tiling`.
        """
        from sdrt.runtime.tokenizer import ClipTokenizer

        manifest = Manifest.load(folder)
        tiles = tiling.from_options(manifest.pipeline, vae_tiling, vae_tile_size)  # fails before loading
        if verify:
            manifest.verify()
        config_path = Path(folder) / "scheduler" / "scheduler_config.json"
        try:
            scheduler_config = json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise SdrtError(f"{config_path} is missing or unreadable ({e}): export the model again with --force")
        tokenizers = {name: ClipTokenizer.from_folder(Path(folder) / name) if component in manifest.spec.text_encoders
                      else None for name, component in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))}
        backend_options = with_precision(precision, backend_options)
        names = candidates(backend, backend_options)
        for i, name in enumerate(names):
            try:
                options = with_precision(precision, backend_options, backend_class(name))
                pipe = cls(manifest, backend_class(name)(**options), tokenizers["tokenizer"], scheduler_config,
                           tokenizer_2=tokenizers["tokenizer_2"])
            except EngineMissing as e:
                if i + 1 == len(names):
                    raise
                print(f"sdrt: backend auto: not {name} ({e}); using {names[i + 1]}", file=sys.stderr, flush=True)
                continue
            break
        else:
            raise AssertionError("unreachable: candidates() returns at least one backend")
        pipe.vae_tiles = tiles
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

    def enable_vae_tiling(self, tile_size: int | None = None) -> None:
        """Decode latents larger than a tile in overlapping `tile_size` px tiles (default: the VAE's
        sample_size), as diffusers' `enable_vae_tiling()`: less memory, pixels slightly unlike the
        untiled decode (`sdrt.runtime.vae_tiling`). `disable_vae_tiling()` decodes whole again."""
        self.vae_tiles = tiling.tiles_for(self.manifest.pipeline, tile_size)

    def disable_vae_tiling(self) -> None:
        self.vae_tiles = None

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
        with the config fixes diffusers' pipeline of this mode applies (only SD 1.x/2.x pipelines do)."""
        if scheduler is not None and hasattr(scheduler, "set_timesteps"):
            return scheduler
        from sdrt.runtime.schedulers import get_scheduler

        made = get_scheduler(self.scheduler_config if scheduler is None else scheduler, self.scheduler_config)
        if not str(self.manifest.pipeline.get("class_name", "StableDiffusion")).startswith("StableDiffusion") \
                or self.family != "sd":
            return made
        fixes = {key: value
                 for key, (outdated, value) in SCHEDULER_CONFIG_FIXES[mode].items()
                 if key in made.config and outdated(made.config[key])}
        return type(made).from_config({**made.config, **fixes}) if fixes else made

    def encode_prompts(self, prompts: list[str], negatives: list[str], per_prompt: int, guidance: bool, *,
                       prompts_2: list[str] | None = None, negatives_2: list[str] | None = None,
                       clip_skip: int | None = None, zero_negatives: bool = False) -> text.TextConditioning:
        """The UNet's text inputs for every UNet row: unconditional first under guidance, each repeated per image."""
        encoders, fed, fed_negative = [], [], []
        feeds = {"text_encoder": (self.tokenizer, prompts, negatives),
                 "text_encoder_2": (self.tokenizer_2, prompts_2 or prompts, negatives_2 or negatives)}
        if self.family == "sdxl-refiner":  # diffusers pairs the prompts with the encoders it has
            feeds["text_encoder_2"] = (self.tokenizer_2, prompts, negatives)
        for name in self.model_spec.text_encoders:
            tokenizer, texts, negative_texts = feeds[name]
            encoders.append(text.Encoder(name, tokenizer, self.engine(name)))
            fed.append(texts)
            fed_negative.append(negative_texts)
        return text.encode(self.family, encoders, fed, fed_negative, per_prompt=per_prompt, guidance=guidance,
                           clip_skip=clip_skip, zero_negatives=zero_negatives)

    def encode_images(self, pixels: np.ndarray, rng: Any) -> np.ndarray:
        """[k, 3, H, W] in [-1, 1] -> sampled, scaled latents [k, C, h, w] ([n, ...] for n per-image
        generators: each image samples its copy of the encoding from its own generator)."""
        engine = self.engine("vae_encoder")
        f = self.vae_scale_factor
        engine.prepare({"B": pixels.shape[0], "h": pixels.shape[2] // f, "w": pixels.shape[3] // f})
        parameters = engine.run({N.IMAGE: pixels})[N.LATENT_PARAMETERS]
        if isinstance(rng, PerImageGenerator):
            parameters = conditioning.tile_to(parameters, len(rng), "image")
        return self.scaling_factor * (conditioning.sample_latents(parameters, rng) - self.shift_factor)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> float32 [N, H, W, 3] in [0, 1]; NaN or inf is an error that names the culprit."""
        if not np.isfinite(latents).all():
            raise SdrtError(f"the UNet ({self.manifest.precision('unet')}) produced NaN or inf latents: "
                            f"export the UNet in fp32, or lower guidance_scale")
        z = latents / self.scaling_factor + self.shift_factor
        decoded = tiling.decode(self.engine("vae_decoder"), z, self.vae_tiles)  # whole unless tiling applies
        if not np.isfinite(decoded).all():
            raise SdrtError(f"the VAE decoder ({self.manifest.precision('vae_decoder')}) produced NaN or inf "
                            f"pixels: export the VAE decoder in fp32 (fp16 VAEs overflow)")
        return imageio.postprocess(decoded)

    # -- the call --------------------------------------------------------------------------------
    def _inputs(self, image: Any, mask_image: Any) -> tuple[list, list, np.ndarray | None]:
        """(images, masks, latents given as the image: a base model's output for a refiner)."""
        if mask_image is not None and image is None:
            raise SdrtError("mask_image (--mask) needs an image (--image) to inpaint")
        if self.inpainting_unet and (image is None or mask_image is None):
            raise SdrtError(f"{self.manifest.folder} has an inpainting UNet: pass an image (--image) "
                            f"and a mask (--mask)")
        if self.family == "sdxl-refiner" and image is None:
            raise SdrtError(f"{self.manifest.folder} is an SDXL refiner: it refines an image (--image), it does "
                            f"not draw from a prompt alone; use it after a base model (sdrt generate --refiner)")
        if isinstance(image, np.ndarray) and image.ndim == 4 and image.shape[1] == self.latent_channels:
            if mask_image is not None:
                raise SdrtError("inpainting needs a picture, not latents: pass the decoded image as --image")
            return [], [], np.asarray(image, dtype=np.float32)
        images = imageio.load_images(image, "image") if image is not None else []
        masks = imageio.load_images(mask_image, "mask") if mask_image is not None else []
        return images, masks, None

    def _size(self, height: int | None, width: int | None, images: list, masks: list,
              given_latents: np.ndarray | None) -> tuple[int, int]:
        """Output size: given, else the input image's (or latents'), else the model's default (sample_size x f)."""
        f = self.vae_scale_factor
        if given_latents is not None:
            default_h, default_w = given_latents.shape[2] * f, given_latents.shape[3] * f
        else:
            default_w, default_h = images[0].size if images else (self.manifest.default_image_size,) * 2
        height = default_h if height is None else height
        width = default_w if width is None else width
        self.manifest.sizes.check_image_size(height, width)
        if given_latents is not None and (height, width) != (default_h, default_w):
            raise SdrtError(f"the latents given as image are {default_h}x{default_w} px, not {height}x{width}: "
                            f"leave height and width out")
        imageio.check_size(images, height, width, "image")
        imageio.check_size(masks, height, width, "mask")
        return height, width

    def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, height: int | None = None,
                 width: int | None = None, num_images_per_prompt: int = 1, seed: int | Sequence[int] | None = None,
                 latents: np.ndarray | None = None, scheduler: Any = None, image: Any = None,
                 strength: float | None = None, mask_image: Any = None, output_type: str = "pil",
                 callback: StepCallback | None = None, generator: Any = None, *,
                 prompt_2: str | Sequence[str] | None = None, negative_prompt_2: str | Sequence[str] | None = None,
                 original_size: tuple[int, int] | None = None, crops_coords_top_left: tuple[int, int] | None = None,
                 target_size: tuple[int, int] | None = None, negative_original_size: tuple[int, int] | None = None,
                 negative_crops_coords_top_left: tuple[int, int] | None = None,
                 negative_target_size: tuple[int, int] | None = None, aesthetic_score: float = 6.0,
                 negative_aesthetic_score: float = 2.5, guidance_rescale: float = 0.0, clip_skip: int | None = None,
                 denoising_start: float | None = None, denoising_end: float | None = None) -> PipelineOutput:
        """Generate; safe from many threads (calls run one at a time, see the module docstring).

        `seed`: an int s (image i uses s + i), one int per image, or None / -1 for a random one.
        The keyword-only arguments are diffusers' SDXL ones (`prompt_2`, the size conditioning,
        `aesthetic_score`s for the refiner), `guidance_rescale` and `clip_skip` (every family), and
        the base -> refiner hand-off (`denoising_end` with output_type="latent", `denoising_start`)."""
        arguments = dict(locals())
        del arguments["self"]
        with self._lock:
            try:
                return self._generate(**arguments)
            except SdrtError:
                raise
            except Exception as e:  # an engine's own exception types (onnxruntime, CUDA, TensorRT)
                if not memory_guard.is_allocation_failure(e):
                    raise
                n = (1 if isinstance(prompt, str) else len(prompt)) * num_images_per_prompt
                raise memory_guard.allocation_failure(e, self.backend_name, height, width, n) from None

    def _generate(self, prompt: Any, negative_prompt: Any, num_inference_steps: Any, guidance_scale: Any,
                  height: Any, width: Any, num_images_per_prompt: Any, seed: Any, latents: Any, scheduler: Any,
                  image: Any, strength: Any, mask_image: Any, output_type: str, callback: Any, generator: Any,
                  prompt_2: Any, negative_prompt_2: Any, original_size: Any, crops_coords_top_left: Any,
                  target_size: Any, negative_original_size: Any, negative_crops_coords_top_left: Any,
                  negative_target_size: Any, aesthetic_score: Any, negative_aesthetic_score: Any,
                  guidance_rescale: Any, clip_skip: Any, denoising_start: Any, denoising_end: Any) -> PipelineOutput:
        t_call = time.perf_counter()
        timings = StageTimings()
        sizes = {"original_size": original_size, "crops_coords_top_left": crops_coords_top_left,
                 "target_size": target_size, "negative_original_size": negative_original_size,
                 "negative_crops_coords_top_left": negative_crops_coords_top_left,
                 "negative_target_size": negative_target_size}
        check_family_arguments(self.family, self.family in SDXL_FAMILIES, self.manifest.folder,
                               {"prompt_2": prompt_2, "negative_prompt_2": negative_prompt_2, **sizes})
        images, masks, given_latents = self._inputs(image, mask_image)
        mode = "inpaint" if masks else "img2img" if images or given_latents is not None else "txt2img"
        if strength is None:
            strength = DEFAULT_STRENGTH[mode][self.family] if mode != "txt2img" else 0.8
        steps, guidance, strength, per_prompt = check_call(
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, strength=strength,
            num_images_per_prompt=num_images_per_prompt, output_type=output_type)
        rescale, clip_skip = check_extras(guidance_rescale=guidance_rescale, clip_skip=clip_skip)
        denoising_start = check_fraction("denoising_start", denoising_start)
        denoising_end = check_fraction("denoising_end", denoising_end)
        if denoising_start is not None and mode == "txt2img":
            raise SdrtError("denoising_start continues from an image or a base model's latents: pass image= "
                            "(img2img), or image= and mask_image= (inpainting)")
        if denoising_start is not None and denoising_end is not None and denoising_start >= denoising_end:
            raise SdrtError(f"denoising_start {denoising_start} must be below denoising_end {denoising_end}")
        prompts, negatives = prompt_lists(prompt, negative_prompt)
        warn_unused_negative(negatives, guidance)
        prompts_2 = prompt_lists(prompts, prompt_2)[1] if prompt_2 is not None else None
        negatives_2 = prompt_lists(prompts, negative_prompt_2)[1] if negative_prompt_2 is not None else None
        height, width = self._size(height, width, images, masks, given_latents)
        n = len(prompts) * per_prompt
        if generator is None:
            seeds = image_seeds(seed, n)
            seed, rng = seeds[0], PerImageGenerator(seeds)
        else:
            seeds, seed, rng = None, None, generator  # the caller's generator: its seed is not ours to report
        cfg = guidance > 1.0 and self.time_cond_dim is None  # LCM: the guidance is an embedding, no CFG batch
        f, C = self.vae_scale_factor, self.latent_channels
        h, w = height // f, width // f
        noise = check_latents(latents, (n, C, h, w)) if latents is not None else None
        if given_latents is not None:
            given_latents = conditioning.tile_to(check_latents(given_latents, given_latents.shape), n, "latent image")

        with timings.measure("text_encoder"):
            zero = (self.family in SDXL_FAMILIES and negative_prompt is None
                    and bool(self.manifest.pipeline.get("force_zeros_for_empty_prompt", False)))
            cond = self.encode_prompts(prompts, negatives, per_prompt, cfg, prompts_2=prompts_2,
                                       negatives_2=negatives_2, clip_skip=clip_skip, zero_negatives=zero)

        sched = self.make_scheduler(scheduler, mode)
        sched.set_timesteps(steps)
        timesteps = np.asarray(sched.timesteps)
        train_steps = int(sched.config.get("num_train_timesteps", 1000))
        if mode == "txt2img" and self.family in SDXL_FAMILIES and hasattr(sched, "set_begin_index"):
            sched.set_begin_index(0)
        if mode != "txt2img":
            if denoising_start is not None:
                begin = start_at(timesteps, denoising_start, train_steps, sched.order)
                remaining = len(timesteps) - begin
            else:
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
            if given_latents is not None:
                image_lat = given_latents
            elif images and (not masks or blend or strength < 1.0 or denoising_start is not None):
                image_lat = conditioning.tile_to(self.encode_images(pixels, rng), n, "image")
            if noise is None and (denoising_start is None or masks):  # inpainting: the blend's noise
                noise = rng.standard_normal((n, C, h, w), dtype=np.float32)
            if self.inpainting_unet:
                masked = conditioning.masked_pixels(pixels, mask_px)
                masked_lat = conditioning.tile_to(self.encode_images(masked, rng), n, "image")
        if denoising_start is not None:
            x = image_lat  # the refiner continues where the base stopped: no fresh noise
        elif image_lat is None or (masks and strength == 1.0):
            x = noise * np.float32(sched.init_noise_sigma)
        else:
            x = sched.add_noise(image_lat, noise, np.repeat(timesteps[:1], n))
        x = np.asarray(x, dtype=np.float32)
        if denoising_end is not None:
            timesteps = cut_timesteps_end(timesteps, denoising_end, train_steps)

        # -- the UNet's per-call inputs, bound once; then the loop --------------------------------
        unet = self.engine("unet")
        batch = 2 * n if cfg else n
        if getattr(self.backend, "materializes_attention", True):  # ort-cpu with MHA: no [S, S] scores
            memory_guard.check_fits(self.backend_name, self._unet_config, batch, height, width, f, n)
        unet.prepare({"B": batch, "h": h, "w": w})
        unet.set_input(N.ENCODER_HIDDEN_STATES, cond.hidden)
        if self.family in SDXL_FAMILIES:
            size_cond = added_conditioning.size_conditioning(height, width, sizes, aesthetic_score,
                                                             negative_aesthetic_score)
            unet.set_input(N.TEXT_EMBEDS, cond.pooled)
            unet.set_input(N.TIME_IDS, added_conditioning.time_ids(
                size_cond, mode=mode, aesthetic=self.family == "sdxl-refiner"
                or bool(self.manifest.pipeline.get("requires_aesthetics_score")), images=n, guidance=cfg))
        if self.time_cond_dim is not None:
            unet.set_input(N.TIMESTEP_COND, added_conditioning.guidance_embedding(guidance, n, self.time_cond_dim))
        model_in = np.zeros((batch, self.unet_in_channels, h, w), dtype=np.float32)
        if masked_lat is not None:
            halves = 2 if cfg else 1
            model_in[:, C:C + 1] = np.concatenate([mask_lat] * halves)
            model_in[:, C + 1:] = np.concatenate([masked_lat] * halves)
        x = denoise(unet, sched, timesteps, x, model_in, images=n, latent_channels=C, guidance=cfg,
                    guidance_scale=guidance, guidance_rescale=rescale,
                    blend=Blend(image_lat, noise, mask_lat) if blend else None, rng=rng, callback=callback,
                    timings=timings)

        if output_type == "latent":
            result = x
        else:
            with timings.measure("vae_decoder"):
                result = self.decode(x)
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
        if self.vae_tiles and output_type != "latent":
            parameters["vae_tiling"] = self.vae_tiles.as_dict(tiled=self.vae_tiles.applies(x.shape))
        if mode != "txt2img":
            parameters["strength"] = strength
        extras = {"prompt_2": prompts_2, "negative_prompt_2": negatives_2, "guidance_rescale": rescale or None,
                  "clip_skip": clip_skip, "denoising_start": denoising_start, "denoising_end": denoising_end,
                  **{k: list(v) for k, v in sizes.items() if v is not None}}
        parameters.update({k: v for k, v in extras.items() if v is not None})
        if self.family == "sdxl-refiner":
            parameters.update(aesthetic_score=float(aesthetic_score),
                              negative_aesthetic_score=float(negative_aesthetic_score))
        images_out = imageio.to_pil(result) if output_type == "pil" else result
        return PipelineOutput(images_out, seed, timings, parameters, seeds)
