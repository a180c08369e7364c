"""The SD3 / SD3.5 call (StableDiffusion3Pipeline, Img2Img, Inpaint): txt2img, img2img and inpainting.

It reproduces diffusers' numbers with numpy around the engines, in the numbered steps every family
follows: 1. check the arguments, 2. encode the prompts (`sd3_prompts`: CLIP-L, CLIP-G and T5, or
zeros without T5), 3. the flow-matching timesteps (`shift`, or `mu` from the image's token count when
the scheduler shifts dynamically; custom `sigmas`; img2img and inpainting start part-way), 4. the
initial latents (noise, or the image's latents noised to the first timestep by `scale_noise`;
diffusers' order of random draws), 5. the transformer's per-call inputs bound once
(`encoder_hidden_states` [B, 77 + L, D], `pooled_projections`), 6. the loop (`denoise`: the transformer
predicts a velocity, the scheduler steps; inpainting blends the known region back in each step),
7. decode (the VAE's shift_factor undone), 8. describe.

`max_sequence_length` (T5's tokens, default 256) is a per-call dimension: the transformer and T5
engines are prepared for it (buffers bound once per shape).
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Sequence

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime import conditioning, images as imageio, metadata, sd3_prompts
from sdrt.runtime.arguments import check_call, check_extras, check_latents, prompt_lists, warn_unused_negative
from sdrt.runtime.denoise import TRANSFORMER_NAMES, Blend, StepCallback, denoise
from sdrt.runtime.pipeline import Pipeline, PipelineOutput
from sdrt.runtime.seeds import PerImageGenerator, image_seeds
from sdrt.runtime.timing import StageTimings
from sdrt.spec import N

DEFAULT_MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's


def start_index(num_inference_steps: int, strength: float, order: int) -> tuple[int, int]:
    """(first timestep index, steps that run) for `strength`, as SD3's get_timesteps (a fractional
    init_timestep: it rounds differently from SD's)."""
    init_timestep = min(num_inference_steps * strength, num_inference_steps)
    t_start = int(max(num_inference_steps - init_timestep, 0))
    return t_start * order, num_inference_steps - t_start


class SD3Pipeline(Pipeline):
    """SD3 / SD3.5 on a transformer: diffusers' arguments, diffusers' numbers."""

    def make_scheduler(self, scheduler: Any = None) -> Any:
        """A fresh flow-matching scheduler: the folder's own, one by name (Euler, Heun, ...) or a config."""
        if scheduler is not None and hasattr(scheduler, "set_timesteps"):
            return scheduler
        from sdrt.runtime.schedulers import get_scheduler, is_flow_config

        made = get_scheduler(self.scheduler_config if scheduler is None else scheduler, self.scheduler_config)
        if not is_flow_config({"_class_name": type(made).__name__}):
            raise SdrtError(f"scheduler {type(made).__name__} is not a flow-matching one; SD3 models take "
                            f"euler or heun (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler)")
        return made

    def __call__(self, prompt: str | Sequence[str], prompt_2: str | Sequence[str] | None = None,
                 prompt_3: str | Sequence[str] | None = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, sigmas: Sequence[float] | None = None, guidance_scale: float = 7.0,
                 negative_prompt: str | Sequence[str] | None = None,
                 negative_prompt_2: str | Sequence[str] | None = None,
                 negative_prompt_3: str | Sequence[str] | None = None, num_images_per_prompt: int = 1,
                 seed: int | Sequence[int] | None = None, generator: Any = None, latents: np.ndarray | None = None,
                 image: Any = None, mask_image: Any = None, strength: float | None = None,
                 output_type: str = "pil", max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
                 clip_skip: int | None = None, mu: float | None = None, scheduler: Any = None,
                 callback: StepCallback | None = None, **others: Any) -> PipelineOutput:
        """Generate (txt2img; img2img with `image`; inpainting with `image` and `mask_image`); safe from
        many threads (calls run one at a time). Arguments are StableDiffusion3Pipeline's; `seed` as in
        every sdrt pipeline (an int s: image i uses s + i), `generator` a numpy-style generator."""
        for key, value in others.items():  # another family's argument (SDXL's size conditioning, ...)
            if value is not None:
                raise SdrtError(f"{key} is not an argument of SD3 pipelines ({self.manifest.folder} is a "
                                f"{self.family_spec.title} model): leave {key} out")
        arguments = dict(locals())
        del arguments["self"], arguments["others"]
        return self._run(self._generate, arguments)

    # -- 1. check ----------------------------------------------------------------------------------
    def _check(self, a: dict[str, Any]) -> dict[str, Any]:
        images, masks, given = self._inputs(a["image"], a["mask_image"])
        if given is not None:
            raise SdrtError("SD3 img2img takes a picture, not latents: pass the decoded image as --image")
        mode = "inpaint" if masks else "img2img" if images else "txt2img"
        strength = a["strength"] if a["strength"] is not None else self.family_spec.default_strength.get(mode, 0.6)
        steps, guidance, strength, per_prompt = check_call(
            num_inference_steps=a["num_inference_steps"], guidance_scale=a["guidance_scale"], strength=strength,
            num_images_per_prompt=a["num_images_per_prompt"], output_type=a["output_type"])
        _, clip_skip = check_extras(guidance_rescale=0.0, clip_skip=a["clip_skip"])
        length = self._check_length(a["max_sequence_length"])
        if a["prompt_3"] is not None and not self.model_spec.has("text_encoder_3"):
            raise SdrtError(f"prompt_3 feeds the T5 encoder, which {self.manifest.folder} lacks (exported "
                            f"without text_encoder_3): leave prompt_3 out, or export a folder that has T5")
        prompts, negatives = prompt_lists(a["prompt"], a["negative_prompt"])
        warn_unused_negative(negatives, guidance)
        fed = [prompts, *(prompt_lists(prompts, a[k])[1] if a[k] is not None else prompts
                          for k in ("prompt_2", "prompt_3"))]
        fed_negative = [negatives, *(prompt_lists(prompts, a[k])[1] if a[k] is not None else negatives
                                     for k in ("negative_prompt_2", "negative_prompt_3"))]
        height, width = self._size(a["height"], a["width"], images, masks, None)
        n = len(prompts) * per_prompt
        f = self.vae_scale_factor
        noise = check_latents(a["latents"], (n, self.latent_channels, height // f, width // f)) \
            if a["latents"] is not None else None
        if a["generator"] is None:
            seeds = image_seeds(a["seed"], n)
            seed, rng = seeds[0], PerImageGenerator(seeds)
        else:
            seeds, seed, rng = None, None, a["generator"]
        return dict(mode=mode, prompts=fed, negatives=fed_negative, steps=steps, guidance=guidance,
                    cfg=guidance > 1.0, strength=strength, per_prompt=per_prompt, clip_skip=clip_skip,
                    length=length, height=height, width=width, images=images, masks=masks, noise=noise, n=n,
                    seed=seed, seeds=seeds, rng=rng, output_type=a["output_type"])

    def _check_length(self, length: Any) -> int:
        limit = int(self.manifest.pipeline.get("max_sequence_length") or 512)
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise SdrtError(f"max_sequence_length {length!r} must be a whole number from 1 to {limit}")
        if length > limit:
            raise SdrtError(f"max_sequence_length {length} is above this model's {limit} (its T5 tokenizer's "
                            f"limit, recorded at export): use at most {limit}")
        return int(length)

    # -- the call ----------------------------------------------------------------------------------
    def _generate(self, **a: Any) -> PipelineOutput:
        t_call = time.perf_counter()
        timings = StageTimings()
        c = self._check(a)  # 1.
        with timings.measure("text_encoder"):  # 2.
            clip_l, clip_g, t5 = sd3_prompts.encoders(self)
            cond = sd3_prompts.encode(clip_l, clip_g, t5, c["prompts"], c["negatives"], per_prompt=c["per_prompt"],
                                      guidance=c["cfg"], length=c["length"],
                                      width=int(self.manifest.values["D"]), clip_skip=c["clip_skip"])
        sched = self.make_scheduler(a["scheduler"])
        timesteps = self._timesteps(c, sched, a["sigmas"], a["mu"])  # 3.
        with timings.measure("vae_encoder"):  # 4.
            x, blend = self._initial_latents(c, sched, timesteps)
        f = self.vae_scale_factor  # 5.
        batch = 2 * c["n"] if c["cfg"] else c["n"]
        engine = self.engine(self.denoiser)
        engine.prepare({"B": batch, "h": c["height"] // f, "w": c["width"] // f, "L": c["length"]})
        engine.set_input(N.ENCODER_HIDDEN_STATES, cond.hidden)
        engine.set_input(N.POOLED_PROJECTIONS, cond.pooled)
        model_in = np.zeros((batch, self.latent_channels, c["height"] // f, c["width"] // f), dtype=np.float32)
        x = denoise(engine, sched, timesteps, x, model_in, images=c["n"], latent_channels=self.latent_channels,
                    guidance=c["cfg"], guidance_scale=c["guidance"], blend=blend, rng=c["rng"],
                    callback=a["callback"], timings=timings, names=TRANSFORMER_NAMES)  # 6.
        if c["output_type"] == "latent":  # 7.
            result = x
        else:
            with timings.measure("vae_decoder"):
                result = self.decode(x)
        timings.total = time.perf_counter() - t_call
        parameters = self._describe(c, sched, a)  # 8.
        images_out = imageio.to_pil(result) if c["output_type"] == "pil" else result
        return PipelineOutput(images_out, c["seed"], timings, parameters, c["seeds"])

    def _timesteps(self, c: dict[str, Any], sched: Any, sigmas: Any, mu: Any) -> np.ndarray:
        """Step 3: the schedule (retrieve_timesteps: custom sigmas, mu for dynamic shifting), cut by strength."""
        from sdrt.runtime.schedulers import mu_for

        kwargs: dict[str, Any] = {}
        if sched.config.get("use_dynamic_shifting") and mu is None:
            p, f = int(self.manifest.pipeline.get("patch_size", 2)), self.vae_scale_factor
            mu = mu_for(sched.config, (c["height"] // f // p) * (c["width"] // f // p))
        if mu is not None:
            kwargs["mu"] = float(mu)
        if sigmas is not None:
            kwargs["sigmas"] = list(sigmas)
        if kwargs and "mu" not in inspect.signature(sched.set_timesteps).parameters:
            raise SdrtError(f"{type(sched).__name__} takes neither sigmas nor mu: leave them out, or use euler")
        sched.set_timesteps(None if sigmas is not None else c["steps"], **kwargs)
        timesteps = np.asarray(sched.timesteps)
        if c["mode"] == "txt2img":
            return timesteps
        steps = sched.num_inference_steps
        begin, remaining = start_index(steps, c["strength"], sched.order)
        if remaining < 1:
            raise SdrtError(f"strength {c['strength']} with {steps} steps leaves no denoising step: raise the "
                            f"strength or the number of steps")
        sched.set_begin_index(begin)
        return timesteps[begin:]

    def _initial_latents(self, c: dict[str, Any], sched: Any, timesteps: np.ndarray) -> tuple[np.ndarray, Blend | None]:
        """Step 4, in diffusers' order of draws: VAE sample of the image, the noise, then (inpainting) the
        masked image's VAE sample, which SD3's 16-channel transformer never reads: only drawn."""
        n, C, f = c["n"], self.latent_channels, self.vae_scale_factor
        h, w = c["height"] // f, c["width"] // f
        rng, images, masks = c["rng"], c["images"], c["masks"]
        image_lat = None
        if images:  # img2img starts from them; SD3's inpainting blends them back in every step
            image_lat = conditioning.tile_to(self.encode_images(imageio.images_to_array(images), rng), n, "image")
        noise = c["noise"] if c["noise"] is not None else rng.standard_normal((n, C, h, w), dtype=np.float32)
        if image_lat is None or (masks and c["strength"] == 1.0):
            x = noise
        else:
            x = sched.scale_noise(image_lat, np.repeat(timesteps[:1], n), noise)
        blend = None
        if masks:
            rows = n if isinstance(rng, PerImageGenerator) else len(images)
            rng.standard_normal((rows, C, h, w), dtype=np.float32)  # the masked image's VAE sample
            mask_px = conditioning.tile_to(imageio.masks_to_array(masks), len(images), "mask")
            blend = Blend(image_lat, noise, conditioning.tile_to(conditioning.mask_latents(mask_px, f), n, "mask"))
        return np.asarray(x, dtype=np.float32), blend

    def _describe(self, c: dict[str, Any], sched: Any, a: dict[str, Any]) -> dict[str, Any]:
        """Step 8: what the call was (PNG metadata, the API's info)."""
        parameters = {
            "mode": c["mode"], "prompt": c["prompts"][0], "negative_prompt": c["negatives"][0], "steps": c["steps"],
            "guidance_scale": c["guidance"], "scheduler": type(sched).__name__, "seed": c["seed"],
            "seeds": c["seeds"], "height": c["height"], "width": c["width"], "num_images_per_prompt": c["per_prompt"],
            "max_sequence_length": c["length"], "backend": self.backend_name,
            "runtime_precision": self.backend.runtime_precision or self.manifest.precision(self.denoiser),
            "model": self.manifest.data.get("source", {}).get("name") or str(self.manifest.folder),
        }
        parameters.update(metadata.describe(self.manifest, sched, c["images"], c["masks"]))
        if self.adapters.active:
            parameters["loras"] = self.loras
        if c["mode"] != "txt2img":
            parameters["strength"] = c["strength"]
        for key in ("prompt_2", "prompt_3", "negative_prompt_2", "negative_prompt_3", "clip_skip", "sigmas", "mu"):
            if a.get(key) is not None:
                parameters[key] = a[key] if not isinstance(a[key], np.ndarray) else a[key].tolist()
        return parameters
