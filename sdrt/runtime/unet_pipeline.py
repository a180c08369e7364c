"""The UNet families' call (SD 1.x/2.x, SDXL base and refiner, LCM): txt2img, img2img and inpainting.

It reproduces diffusers' StableDiffusion(XL)Pipeline / Img2Img / Inpaint and
LatentConsistencyModelPipeline numbers (same tokenizer ids, same scheduler maths, same pre- and
post-processing), with numpy around the engines; what differs between these families comes from the
family table (`sdrt.spec.families`). The call reads as diffusers' `__call__` does, in numbered steps:
1. check the arguments (`call`), 2. encode the prompts (`prompts`), 3. the timesteps, 4. the initial
latents and image conditioning (`conditioning`), 5. the denoiser's per-call inputs (SDXL's time ids,
LCM's guidance embedding: `added_conditioning`), 6. the loop (`denoise`), 7. decode, 8. describe.

- text embeddings are computed once per call and stay bound in the UNet's `encoder_hidden_states`;
- each denoising step writes the latents into the bound `sample` buffer (and the step's timestep
  into `timestep`), runs, and reads the bound `out_sample` buffer;
- classifier-free guidance (guidance_scale > 1) runs the unconditional half first in one batch
  (LCM-distilled UNets take the guidance scale as the `timestep_cond` embedding instead);
- `denoising_end` stops a base model early and `output_type="latent"` returns its latents, which a
  refiner continues from with `image=latents, denoising_start=...` (diffusers' ensemble of experts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from sdrt.engines.base import Engine
from sdrt.errors import SdrtError
from sdrt.runtime import (added_conditioning, conditioning, controlnet, images as imageio, memory_guard, metadata,
                          prompts as text, variation)
from sdrt.runtime.prompt_chunks import max_text_tokens
from sdrt.runtime.call import Call, check as check_call
from sdrt.runtime.denoise import Blend, StepCallback, cut_timesteps_end, denoise, start_at
from sdrt.runtime.pipeline import Pipeline, PipelineOutput
from sdrt.runtime.timing import StageTimings
from sdrt.spec import N

#: Scheduler config values diffusers' SD 1.x/2.x pipelines override in their __init__ (for old
#: checkpoints' configs; the family table names those classes), by mode: key -> (is it outdated?,
#: the value diffusers uses instead). They differ: the inpaint pipeline keeps clip_sample but forces
#: skip_prk_steps.
_STEPS_OFFSET = ("steps_offset", (lambda v: v != 1, 1))
SCHEDULER_CONFIG_FIXES: dict[str, dict[str, tuple[Callable[[Any], bool], Any]]] = {
    "txt2img": dict([_STEPS_OFFSET, ("clip_sample", (lambda v: v is True, False))]),
    "img2img": dict([_STEPS_OFFSET, ("clip_sample", (lambda v: v is True, False))]),
    "inpaint": dict([_STEPS_OFFSET, ("skip_prk_steps", (lambda v: v is False, True))]),
}


class UNetPipeline(Pipeline):
    """SD 1.x/2.x, SDXL (base, refiner, Turbo) and LCM on a UNet: diffusers' arguments, diffusers' numbers."""

    #: how its prompts may be read (`prompt_syntax`): diffusers' way (None) or AUTOMATIC1111's
    prompt_syntaxes = (None, "a1111")

    def make_scheduler(self, scheduler: Any = None, mode: str = "txt2img") -> Any:
        """A fresh scheduler: the folder's own, one by name (its config on top of the folder's) or a config,
        with the config fixes diffusers' pipeline of this mode applies (the family table says which do)."""
        if scheduler is not None and hasattr(scheduler, "set_timesteps"):
            return scheduler
        from sdrt.runtime.schedulers import get_scheduler

        made = get_scheduler(self.scheduler_config if scheduler is None else scheduler, self.scheduler_config)
        if self.manifest.pipeline.get("class_name") not in self.family_spec.scheduler_config_fixes:
            return made
        if len(self.controlnets):  # diffusers' ControlNet pipelines apply none of these fixes
            return made
        fixes = {key: value
                 for key, (outdated, value) in SCHEDULER_CONFIG_FIXES[mode].items()
                 if key in made.config and outdated(made.config[key])}
        return type(made).from_config({**made.config, **fixes}) if fixes else made

    def encode_prompts(self, prompts: list[str], negatives: list[str], per_prompt: int, guidance: bool, *,
                       prompts_2: list[str] | None = None, negatives_2: list[str] | None = None,
                       clip_skip: int | None = None, zero_negatives: bool = False,
                       syntax: str | None = None) -> text.TextConditioning:
        """The UNet's text inputs for every UNet row: unconditional first under guidance, each repeated per
        image. Each text encoder is fed the prompt argument the family table pairs it with."""
        fed_by = {"prompt": (prompts, negatives), "prompt_2": (prompts_2 or prompts, negatives_2 or negatives)}
        encoders, fed, fed_negative = [], [], []
        for name, (tokenizer, argument) in self.family_spec.text_encoders.items():
            texts, negative_texts = fed_by[argument]
            encoders.append(text.Encoder(name, self.tokenizers[tokenizer], self.engine(name)))
            fed.append(texts)
            fed_negative.append(negative_texts)
        return text.encode(self.family_spec.text_layer, encoders, fed, fed_negative, per_prompt=per_prompt,
                           guidance=guidance, clip_skip=clip_skip, zero_negatives=zero_negatives, syntax=syntax,
                           max_tokens=max_text_tokens(self.manifest), embeddings=self.embeddings)

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
                 denoising_start: float | None = None, denoising_end: float | None = None,
                 prompt_syntax: str | None = None, subseed: int | Sequence[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from_h: int = 0,
                 seed_resize_from_w: int = 0,
                 control_image: Any = None, controlnet_conditioning_scale: float | Sequence[float] | None = None,
                 control_guidance_start: float | Sequence[float] = 0.0,
                 control_guidance_end: float | Sequence[float] = 1.0, guess_mode: bool = False,
                 ip_adapter_image: Any = None) -> PipelineOutput:
        """Generate; safe from many threads (calls run one at a time, see the module docstring).

        `seed`: an int s (image i uses s + i), one int per image, or None / -1 for a random one.
        The keyword-only arguments are diffusers' SDXL ones (`prompt_2`, the size conditioning,
        `aesthetic_score`s for the refiner), `guidance_rescale` and `clip_skip` (every family), and
        the base -> refiner hand-off (`denoising_end` with output_type="latent", `denoising_start`).
        AUTOMATIC1111's: `prompt_syntax="a1111"` reads emphasis, BREAK and prompts past 77 tokens
        (default: diffusers' way), and the variation seeds `subseed`, `subseed_strength`,
        `seed_resize_from_h/w` (`sdrt.runtime.variation`).
        With ControlNets (`Pipeline.load(..., controlnet=...)`): `control_image` (one per ControlNet),
        `controlnet_conditioning_scale` (default: diffusers' for the mode, e.g. 1.0 txt2img, 0.8 img2img,
        0.5 SD inpainting), `control_guidance_start` / `_end` (each a value or one per ControlNet) and
        `guess_mode`, as diffusers' ControlNet pipelines take them. With an IP-Adapter
        (`Pipeline.load(..., ip_adapter=...)`): `ip_adapter_image` (a PIL image, an array or a path;
        its weight: `set_ip_adapter_scale`)."""
        arguments = dict(locals())
        del arguments["self"]
        return self._run(self._generate, arguments)

    def _generate(self, **arguments: Any) -> PipelineOutput:
        t_call = time.perf_counter()
        timings = StageTimings()
        # 1. Check the call: every bad argument is one line, before any engine runs.
        call = check_call(self.family_spec, self.manifest.folder, arguments, inputs=self._inputs,
                          size_of=self._size, latent_channels=self.latent_channels,
                          vae_scale_factor=self.vae_scale_factor, guidance_is_embedded=self.time_cond_dim is not None)
        control = controlnet.check(len(self.controlnets), arguments, prompts=len(call.prompts), height=call.height,
                                   width=call.width, default_scale=self.family_spec.controlnet_scale.get(call.mode, 1.0))
        ip_picture = self._ip_adapter_picture(arguments.get("ip_adapter_image"))
        # 2. Encode the prompts (unconditional rows first under classifier-free guidance).
        self.embeddings.used.clear()
        with timings.measure("text_encoder"):
            # SDXL's zeros for no negative prompt (the web UI's syntax: for empty ones, as it does)
            empty = not any(call.negatives) if call.syntax == "a1111" else not call.negative_given
            zero = (self.family_spec.size_conditioning and empty
                    and bool(self.manifest.pipeline.get("force_zeros_for_empty_prompt", False)))
            cond = self.encode_prompts(call.prompts, call.negatives, call.per_prompt, call.cfg,
                                       prompts_2=call.prompts_2, negatives_2=call.negatives_2,
                                       clip_skip=call.clip_skip, zero_negatives=zero, syntax=call.syntax)
        # 3. The timesteps (img2img and inpainting start part-way; a refiner at denoising_start).
        sched = self.make_scheduler(arguments["scheduler"], call.mode)
        timesteps = self._timesteps(call, sched)
        # 4. The initial latents and the image conditioning, in diffusers' order of random draws.
        with timings.measure("vae_encoder"):
            x, start = self._initial_latents(call, sched, timesteps)
        if call.denoising_end is not None:
            timesteps = cut_timesteps_end(timesteps, call.denoising_end,
                                          int(sched.config.get("num_train_timesteps", 1000)))
        # 5. The denoiser's per-call inputs, bound once for the whole loop (and the ControlNets').
        denoiser, model_in, fixed = self._bind_denoiser(call, cond, start)
        if self.ip_adapter is not None:  # the image prompt's keys and values, bound for the whole loop
            with timings.measure("text_encoder"):
                embeds = None if ip_picture is None else self.ip_adapter.embeds(ip_picture)
                self.ip_adapter.bind(denoiser, embeds, images=call.n, guidance=call.cfg)
        before_unet = None
        if control is not None:
            before_unet = controlnet.ControlStep(
                self.controlnets, control, denoiser, fixed, images=call.n, per_prompt=call.per_prompt,
                guidance=call.cfg, steps=len(timesteps), latent_channels=self.latent_channels,
                dims=dict(denoiser.dims or {}))
        elif self.manifest.pipeline.get("residual_inputs"):  # ControlNets loaded, none in this call
            controlnet.zero_residuals(denoiser)
        # 6. The denoising loop.
        x = denoise(denoiser, sched, timesteps, x, model_in, images=call.n, latent_channels=self.latent_channels,
                    guidance=call.cfg, guidance_scale=call.guidance, guidance_rescale=call.rescale,
                    blend=start.blend, rng=call.rng, callback=arguments["callback"], timings=timings,
                    before_unet=before_unet)
        # 7. Decode (or hand back the latents).
        if call.output_type == "latent":
            result = x
        else:
            with timings.measure("vae_decoder"):
                result = self.decode(x)
        timings.total = time.perf_counter() - t_call
        # 8. Describe the call (what the PNG metadata and the API answers record).
        parameters = self._describe(call, sched, x)
        if control is not None:
            parameters["controlnets"] = control.describe(self.controlnets.names)
        if ip_picture is not None:
            parameters["ip_adapter"] = self.ip_adapter.describe()
        images_out = imageio.to_pil(result) if call.output_type == "pil" else result
        return PipelineOutput(images_out, call.seed, timings, parameters, call.seeds)

    def _ip_adapter_picture(self, image: Any) -> Any:
        """Step 1's IP-Adapter part: the loaded ip_adapter_image, None without one; one line when misplaced."""
        if image is None:
            return None
        if self.ip_adapter is None:
            raise SdrtError("ip_adapter_image was given but the pipeline has no IP-Adapter: load one with "
                            "Pipeline.load(..., ip_adapter=DIR) (--ip-adapter DIR)")
        return self.ip_adapter.picture(image)

    def _timesteps(self, call: Call, sched: Any) -> np.ndarray:
        """Step 3: the scheduler's timesteps for this call, cut where img2img or a refiner starts."""
        sched.set_timesteps(call.steps)
        timesteps = np.asarray(sched.timesteps)
        if call.mode == "txt2img":
            if self.family_spec.size_conditioning and hasattr(sched, "set_begin_index"):
                sched.set_begin_index(0)  # diffusers' SDXL pipelines do
            return timesteps
        train_steps = int(sched.config.get("num_train_timesteps", 1000))
        if call.denoising_start is not None:
            begin = start_at(timesteps, call.denoising_start, train_steps, sched.order)
            remaining = len(timesteps) - begin
        else:
            begin, remaining = conditioning.start_index(call.steps, call.strength, sched.order)
        if remaining < 1:
            raise SdrtError(f"strength {call.strength} with {call.steps} steps leaves no denoising step: "
                            f"raise the strength or the number of steps")
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(begin)
        return timesteps[begin:]

    def _initial_latents(self, call: Call, sched: Any, timesteps: np.ndarray) -> tuple[np.ndarray, "_Start"]:
        """Step 4: the latents the loop starts from, and the inpainting inputs (diffusers' draw order: VAE
        sample of the image, the initial noise, VAE sample of the masked image)."""
        n, C, f = call.n, self.latent_channels, self.vae_scale_factor
        h, w = call.height // f, call.width // f
        rng, noise, images, masks = call.rng, call.noise, call.images, call.masks
        mask_lat = masked_lat = image_lat = None
        blend = bool(masks) and not self.inpainting_unet
        pixels = imageio.images_to_array(images) if images else None
        if masks:
            mask_px = conditioning.tile_to(imageio.masks_to_array(masks), len(images), "mask")
            mask_lat = conditioning.tile_to(conditioning.mask_latents(mask_px, f), n, "mask")
        if call.given_latents is not None:
            image_lat = call.given_latents
        elif images and (not masks or blend or call.strength < 1.0 or call.denoising_start is not None):
            image_lat = conditioning.tile_to(self.encode_images(pixels, rng), n, "image")
        if noise is None and (call.denoising_start is None or masks):  # inpainting: the blend's noise
            noise = variation.initial_noise(rng, (n, C, h, w), call.variation, call.seeds, f)
        if self.inpainting_unet:
            masked = conditioning.masked_pixels(pixels, mask_px)
            masked_lat = conditioning.tile_to(self.encode_images(masked, rng), n, "image")
        if call.denoising_start is not None:
            x = image_lat  # the refiner continues where the base stopped: no fresh noise
        elif image_lat is None or (masks and call.strength == 1.0):
            x = noise * np.float32(sched.init_noise_sigma)
        else:
            x = sched.add_noise(image_lat, noise, np.repeat(timesteps[:1], n))
        start = _Start(mask_lat, masked_lat, Blend(image_lat, noise, mask_lat) if blend else None)
        return np.asarray(x, dtype=np.float32), start

    def _bind_denoiser(self, call: Call, cond: text.TextConditioning,
                       start: "_Start") -> tuple[Engine, np.ndarray, dict[str, np.ndarray]]:
        """Step 5: prepare the denoiser for this call's shapes and bind what stays fixed over the loop (text
        embeddings, SDXL's text_embeds and time_ids, LCM's guidance embedding); returns it, the
        input buffer the loop writes (inpainting UNets: mask and masked-image channels filled) and the
        text conditioning it bound (what ControlNets take too)."""
        n, C, f = call.n, self.latent_channels, self.vae_scale_factor
        h, w = call.height // f, call.width // f
        engine = self.engine(self.denoiser)
        batch = 2 * n if call.cfg else n
        memory_guard.check_fits(self.backend_name, self.backend.attention_bytes, self._denoiser_config, batch,
                                call.height, call.width, f, n)
        engine.prepare({"B": batch, "h": h, "w": w, "L": cond.hidden.shape[1]})
        fixed = {N.ENCODER_HIDDEN_STATES: cond.hidden}
        if self.family_spec.size_conditioning:
            size_cond = added_conditioning.size_conditioning(call.height, call.width, call.sizes, call.aesthetic_score,
                                                             call.negative_aesthetic_score)
            fixed[N.TEXT_EMBEDS] = cond.pooled
            fixed[N.TIME_IDS] = added_conditioning.time_ids(
                size_cond, mode=call.mode, aesthetic=self.family_spec.aesthetic_score
                or bool(self.manifest.pipeline.get("requires_aesthetics_score")), images=n, guidance=call.cfg)
        for name, value in fixed.items():
            engine.set_input(name, value)
        if self.time_cond_dim is not None:
            engine.set_input(N.TIMESTEP_COND, added_conditioning.guidance_embedding(call.guidance, n, self.time_cond_dim))
        model_in = np.zeros((batch, self.unet_in_channels, h, w), dtype=np.float32)
        if start.masked_latents is not None:
            halves = 2 if call.cfg else 1
            model_in[:, C:C + 1] = np.concatenate([start.mask_latents] * halves)
            model_in[:, C + 1:] = np.concatenate([start.masked_latents] * halves)
        return engine, model_in, fixed

    def _describe(self, call: Call, sched: Any, x: np.ndarray) -> dict[str, Any]:
        """Step 8: what the call was (its PNG metadata, the API's info): enough to redo any image."""
        parameters = {
            "mode": call.mode,
            "prompt": call.prompts, "negative_prompt": call.negatives, "steps": call.steps,
            "guidance_scale": call.guidance, "scheduler": type(sched).__name__, "seed": call.seed,
            "seeds": call.seeds, "height": call.height, "width": call.width, "num_images_per_prompt": call.per_prompt,
            "backend": self.backend_name,
            # what the denoiser computes in: the backend's run-time precision, else the exported one
            "runtime_precision": self.backend.runtime_precision or self.manifest.precision(self.denoiser),
            "model": self.manifest.data.get("source", {}).get("name") or str(self.manifest.folder),
        }
        parameters.update(metadata.describe(self.manifest, sched, call.images, call.masks))
        if self.adapters.active:
            parameters["loras"] = self.loras
        if self.embeddings.used:
            parameters["textual_inversions"] = self.embeddings.describe()
        if self.vae_manifest is not None:
            from sdrt.runtime.vae_swap import vae_name

            parameters["vae"] = vae_name(self.vae_manifest)
        if self.vae_tiles and call.output_type != "latent":
            parameters["vae_tiling"] = self.vae_tiles.as_dict(tiled=self.vae_tiles.applies(x.shape))
        if call.mode != "txt2img":
            parameters["strength"] = call.strength
        extras = {"prompt_2": call.prompts_2, "negative_prompt_2": call.negatives_2,
                  "guidance_rescale": call.rescale or None, "clip_skip": call.clip_skip,
                  "denoising_start": call.denoising_start, "denoising_end": call.denoising_end,
                  "prompt_syntax": call.syntax, **(call.variation.describe() if call.variation else {}),
                  **{k: list(v) for k, v in call.sizes.items() if v is not None}}
        parameters.update({k: v for k, v in extras.items() if v is not None})
        if self.family_spec.aesthetic_score:
            parameters.update(aesthetic_score=float(call.aesthetic_score),
                              negative_aesthetic_score=float(call.negative_aesthetic_score))
        return parameters


@dataclass
class _Start:
    """Step 4's inpainting inputs: the mask and masked-image latents (9-channel UNets), and the blend of
    the known region (4-channel UNets)."""

    mask_latents: np.ndarray | None
    masked_latents: np.ndarray | None
    blend: Blend | None
