"""Flux.1's call (dev, schnell and their fine-tunes; Fill): txt2img, img2img and inpainting, torch-free.

It reproduces diffusers' FluxPipeline / FluxImg2ImgPipeline / FluxInpaintPipeline / FluxFillPipeline
numbers (same tokenizer ids, the same flow-matching scheduler maths, the same packing and position
ids), with numpy around the engines. The call reads as diffusers' `__call__` does, in numbered steps:
1. check the arguments (`flux_call`), 2. encode the prompts (CLIP's pooled output for `prompt`, T5's
hidden states for `prompt_2`), 3. the timesteps (the resolution-dependent shift `mu`; img2img and
inpainting start part-way), 4. the initial latents, packed into tokens (`flux_latents`), and the
inpainting inputs, 5. the transformer's per-call inputs, bound once (text, pooled text, position ids,
the embedded guidance), 6. the loop, 7. unpack and decode, 8. describe.

- Guidance: a dev-style transformer embeds `guidance_scale` (one transformer row per image);
  `true_cfg_scale` > 1 with a negative prompt runs the negative prompt's rows beside the positive
  ones in the same batch (diffusers runs them as a second call: the same numbers);
- each step writes the packed latents into the bound `hidden_states` buffer (both halves under true
  CFG) and the step's timestep into `timestep`, runs, and reads `out_hidden_states`;
- `output_type="latent"` returns the packed latents [N, tokens, 4C], and `latents=` takes them in
  that form, as FluxPipeline does.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime import flux_call, flux_latents as tokens, images as imageio, metadata
from sdrt.runtime.conditioning import tile_to
from sdrt.runtime.denoise import StepCallback
from sdrt.runtime.pipeline import Pipeline, PipelineOutput
from sdrt.runtime.schedulers import mu_for
from sdrt.runtime.timing import StageTimings
from sdrt.spec import FluxName as FN


@dataclass
class _Start:
    """Step 4's result: the packed latents the loop starts from, and inpainting's blend inputs."""

    latents: np.ndarray
    image_tokens: np.ndarray | None = None   # the packed image latents (the blend's known region)
    noise_tokens: np.ndarray | None = None
    mask_tokens: np.ndarray | None = None
    condition: np.ndarray | None = None      # Fill: masked-image and mask tokens, after the latents


class FluxPipeline(Pipeline):
    """Flux.1 on its transformer: diffusers' arguments, diffusers' numbers."""

    @property
    def inpainting_unet(self) -> bool:
        """A Flux Fill transformer: latents + masked-image latents + mask, packed."""
        return bool(self.manifest.pipeline.get("inpainting", False))

    def _inputs(self, image: Any, mask_image: Any) -> tuple[list, list, np.ndarray | None]:
        if self.inpainting_unet and (image is None or mask_image is None):
            raise SdrtError(f"{self.manifest.folder} is a Flux Fill model: it repaints the masked part of an image; "
                            f"pass an image (--image) and a mask (--mask)")
        return super()._inputs(image, mask_image)

    @property
    def guidance_embedded(self) -> bool:
        return "guidance" in self.model_spec.variants

    @property
    def max_sequence_length(self) -> int:
        return int(self.manifest.pipeline.get("max_sequence_length", flux_call.MAX_SEQUENCE_LENGTH))

    def make_scheduler(self, scheduler: Any = None) -> Any:
        """A fresh scheduler: the folder's own, one by name (its config on top of the folder's) or a config."""
        if scheduler is not None and hasattr(scheduler, "set_timesteps"):
            return scheduler
        from sdrt.runtime.schedulers import get_scheduler

        return get_scheduler(self.scheduler_config if scheduler is None else scheduler, self.scheduler_config)

    def __call__(self, prompt: str | Sequence[str], prompt_2: str | Sequence[str] | None = None,
                 negative_prompt: str | Sequence[str] | None = None,
                 negative_prompt_2: str | Sequence[str] | None = None, true_cfg_scale: float = 1.0,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 sigmas: Sequence[float] | None = None, guidance_scale: float | None = None,
                 num_images_per_prompt: int = 1, seed: int | Sequence[int] | None = None, generator: Any = None,
                 latents: np.ndarray | None = None, image: Any = None, mask_image: Any = None,
                 strength: float | None = None, output_type: str = "pil", max_sequence_length: int | None = None,
                 scheduler: Any = None, callback: StepCallback | None = None, **unet_only: Any) -> PipelineOutput:
        """Generate; safe from many threads (calls run one at a time).

        diffusers' FluxPipeline arguments (see `flux_call`); `seed`: an int s (image i uses s + i), one
        int per image, or None / -1 for a random one. Defaults are diffusers': 28 steps (Fill 50),
        guidance_scale 3.5 (img2img and inpainting 7.0, Fill 30), strength 0.6, max_sequence_length 512
        (or less where the export allows less)."""
        unknown = [key for key in unet_only if key not in flux_call.UNET_ONLY]
        if unknown:
            raise TypeError(f"FluxPipeline.__call__() got an unexpected keyword argument {unknown[0]!r}")
        arguments = dict(locals())
        del arguments["self"], arguments["unet_only"], arguments["unknown"]
        arguments.update(unet_only)
        return self._run(self._generate, arguments)

    def _generate(self, **arguments: Any) -> PipelineOutput:
        t_call = time.perf_counter()
        timings = StageTimings()
        # 1. Check the call: every bad argument is one line, before any engine runs.
        call = flux_call.check(arguments, folder=self.manifest.folder, fill=self.inpainting_unet,
                               guidance_embedded=self.guidance_embedded, latent_channels=self.latent_channels,
                               vae_scale_factor=self.vae_scale_factor, max_sequence_length=self.max_sequence_length,
                               default_strength=dict(self.family_spec.default_strength), inputs=self._inputs,
                               size_of=self._size)
        f = self.vae_scale_factor
        h, w = call.height // f, call.width // f
        grid = (h // tokens.PATCH, w // tokens.PATCH)
        # 2. Encode the prompts (the negative prompt's rows first under true CFG).
        with timings.measure("text_encoder"):
            pooled, hidden = self.encode_prompts(call)
        # 3. The timesteps (img2img and inpainting start part-way).
        sched = self.make_scheduler(arguments["scheduler"])
        timesteps = self._timesteps(call, sched, grid[0] * grid[1])
        # 4. The initial latents, packed, and the inpainting inputs (diffusers' order of random draws).
        with timings.measure("vae_encoder"):
            start = self._initial_latents(call, sched, timesteps, h, w)
        # 5. The transformer's per-call inputs, bound once for the whole loop.
        engine = self.engine(self.denoiser)
        engine.prepare({"B": call.rows, "h": h, "w": w, "L": hidden.shape[1]})  # latent dims: h/2*w/2 tokens
        engine.set_input(FN.ENCODER_HIDDEN_STATES, hidden)
        engine.set_input(FN.POOLED_PROJECTIONS, pooled)
        engine.set_input(FN.IMG_IDS, tokens.image_ids(*grid))
        engine.set_input(FN.TXT_IDS, tokens.text_ids(hidden.shape[1]))
        if call.guidance is not None:
            engine.set_input(FN.GUIDANCE, np.full((call.rows,), call.guidance, dtype=np.float32))
        # 6. The denoising loop.
        x = self._denoise(engine, call, sched, timesteps, start, arguments["callback"], timings)
        # 7. Unpack and decode (or hand back the packed latents).
        if call.output_type == "latent":
            result = x
        else:
            with timings.measure("vae_decoder"):
                result = self.decode(tokens.unpack(x, h, w))
        timings.total = time.perf_counter() - t_call
        # 8. Describe the call (what the PNG metadata and the API answers record).
        parameters = self._describe(call, sched, (x.shape[0], self.latent_channels, h, w))
        images_out = imageio.to_pil(result) if call.output_type == "pil" else result
        return PipelineOutput(images_out, call.seed, timings, parameters, call.seeds)

    # -- 2. text --------------------------------------------------------------------------------------
    def encode_prompts(self, call: flux_call.FluxCall) -> tuple[np.ndarray, np.ndarray]:
        """(pooled CLIP [rows, P], T5 hidden states [rows, L, D]): each prompt's rows repeated per image,
        the negative prompt's first under true CFG."""
        texts = (call.negatives + call.prompts) if call.true_cfg else call.prompts
        texts_2 = (call.negatives_2 + call.prompts_2) if call.true_cfg else call.prompts_2
        clip = self.engine("text_encoder")
        clip.prepare({"B": len(texts)})
        pooled = np.array(clip.run({FN.INPUT_IDS: self.tokenizers["tokenizer"](texts)})[FN.POOLER_OUTPUT],
                           dtype=np.float32)
        ids = self.tokenizers["tokenizer_2"](texts_2, call.max_sequence_length)
        t5 = self.engine("text_encoder_2")
        t5.prepare({"B": len(texts_2), "L": ids.shape[1]})
        hidden = np.array(t5.run({FN.INPUT_IDS: ids})[FN.LAST_HIDDEN_STATE], dtype=np.float32)
        return np.repeat(pooled, call.per_prompt, axis=0), np.repeat(hidden, call.per_prompt, axis=0)

    # -- 3. timesteps ---------------------------------------------------------------------------------
    def _timesteps(self, call: flux_call.FluxCall, sched: Any, image_tokens: int) -> np.ndarray:
        """FluxPipeline's schedule: sigmas 1 .. 1/n (or the caller's), shifted by mu for this image size;
        img2img and inpainting skip the first (1 - strength) of it (FluxImg2ImgPipeline.get_timesteps)."""
        steps = call.steps if call.sigmas is None else len(call.sigmas)
        sigmas = np.linspace(1.0, 1 / steps, steps) if call.sigmas is None else call.sigmas
        if sched.config.get("use_flow_sigmas"):
            sigmas = None
        elif "sigmas" not in inspect.signature(sched.set_timesteps).parameters:
            raise SdrtError(f"scheduler {type(sched).__name__} cannot take Flux's schedule (its own sigmas, shifted "
                            f"for the image size; diffusers' FluxPipeline refuses it too): use euler, euler_karras, "
                            f"euler_exponential or euler_beta")
        sched.set_timesteps(steps, sigmas=sigmas, mu=mu_for(sched.config, image_tokens))
        timesteps = np.asarray(sched.timesteps)
        if call.mode == "txt2img":
            sched.set_begin_index(0)
            return timesteps
        steps = len(timesteps) // sched.order
        init_timestep = min(steps * call.strength, steps)
        t_start = int(max(steps - init_timestep, 0))
        if steps - t_start < 1:
            raise SdrtError(f"strength {call.strength} with {steps} steps leaves no denoising step: "
                            f"raise the strength or the number of steps")
        sched.set_begin_index(t_start * sched.order)
        return timesteps[t_start * sched.order:]

    # -- 4. latents -----------------------------------------------------------------------------------
    def _initial_latents(self, call: flux_call.FluxCall, sched: Any, timesteps: np.ndarray, h: int,
                         w: int) -> _Start:
        """Packed starting latents and the image conditioning, in diffusers' order of random draws: the
        VAE sample of the image, the initial noise, the VAE sample of the masked image."""
        n, C, rng = call.n, self.latent_channels, call.rng
        if call.mode == "txt2img":
            noise = call.latents if call.latents is not None else tokens.pack(
                rng.standard_normal((n, C, h, w), dtype=np.float32))
            return _Start(np.asarray(noise, dtype=np.float32))
        pixels = imageio.images_to_array(call.images) if call.images else None
        image_latents = call.given_latents
        blend = call.mode == "inpaint" and not self.inpainting_unet  # the known region comes from the image
        if image_latents is None and pixels is not None and (call.latents is None or blend):
            image_latents = tile_to(self.encode_images(pixels, rng), n, "image")
        if call.latents is not None:  # diffusers takes given latents as they are: no noise is added
            x = noise = call.latents
        else:
            raw_noise = rng.standard_normal((n, C, h, w), dtype=np.float32)
            x = tokens.pack(np.asarray(sched.scale_noise(image_latents, np.repeat(timesteps[:1], n), raw_noise),
                                       dtype=np.float32))
            noise = tokens.pack(raw_noise)
        if call.mode == "img2img":
            return _Start(x)
        masks = imageio.masks_to_array(call.masks)
        if self.inpainting_unet:  # Fill: the masked image's latents and the mask's pixels, after the latents
            masked = tile_to(self.encode_images(pixels * (1 - masks), rng), n, "image")
            mask = tile_to(tokens.fill_mask_tokens(masks, h, w, self.vae_scale_factor), n, "mask")
            return _Start(x, condition=np.concatenate([tokens.pack(masked), mask], axis=2))
        tile_to(self.encode_images(pixels * (masks < 0.5), rng), n, "image")  # FluxInpaintPipeline draws it (unused)
        mask = tile_to(tokens.mask_tokens(masks, h, w, C), n, "mask")
        return _Start(x, tokens.pack(image_latents), noise, mask)

    # -- 6. the loop ----------------------------------------------------------------------------------
    def _denoise(self, engine: Any, call: flux_call.FluxCall, sched: Any, timesteps: np.ndarray, start: _Start,
                 callback: StepCallback | None, timings: StageTimings) -> np.ndarray:
        n = call.n
        x = start.latents
        width = x.shape[2]
        model_in = np.zeros((call.rows, x.shape[1], int(self.unet_in_channels)), dtype=np.float32)
        if start.condition is not None:  # Fill: masked-image latents and mask after the latent channels
            model_in[:, :, width:] = np.concatenate([start.condition] * (2 if call.true_cfg else 1))
        t_in = np.zeros((call.rows,), dtype=np.float32)
        for i, t in enumerate(timesteps):
            t0 = time.perf_counter()
            model_in[:n, :, :width] = x
            if call.true_cfg:
                model_in[n:, :, :width] = x
            t_in.fill(t)
            t1 = time.perf_counter()
            out = engine.run({FN.LATENTS: model_in, FN.TIMESTEP: t_in})[FN.OUT_LATENTS]
            t2 = time.perf_counter()
            if call.true_cfg:  # rows: the negative prompt's, then the prompt's
                negative = out[:n].astype(np.float32, copy=False)
                velocity = negative + np.float32(call.true_cfg_scale) * (out[n:].astype(np.float32, copy=False)
                                                                         - negative)
            else:
                velocity = out.astype(np.float32)  # a copy: the engine overwrites `out` next step
            x = np.asarray(sched.step(velocity, t, x, generator=call.rng).prev_sample, dtype=np.float32)
            if start.mask_tokens is not None:
                proper = start.image_tokens
                if i < len(timesteps) - 1:
                    proper = sched.scale_noise(start.image_tokens, timesteps[i + 1:i + 2], start.noise_tokens)
                x = ((1 - start.mask_tokens) * proper + start.mask_tokens * x).astype(np.float32)
            if callback is not None:
                callback(i, t, x)
            timings.unet_steps.append(t2 - t1)
            timings.host_steps.append(time.perf_counter() - t0 - (t2 - t1))
        return x

    # -- 8. describe ----------------------------------------------------------------------------------
    def _describe(self, call: flux_call.FluxCall, sched: Any, latent_shape: tuple[int, ...]) -> dict[str, Any]:
        """What the call was (its PNG metadata, the API's info): enough to redo any image."""
        parameters = {
            "mode": call.mode,
            "prompt": call.prompts, "negative_prompt": call.negatives if call.true_cfg else [""] * len(call.prompts),
            "steps": call.steps, "guidance_scale": call.guidance_given, "scheduler": type(sched).__name__,
            "seed": call.seed, "seeds": call.seeds, "height": call.height, "width": call.width,
            "num_images_per_prompt": call.per_prompt, "backend": self.backend_name,
            "runtime_precision": self.backend.runtime_precision or self.manifest.precision(self.denoiser),
            "model": self.manifest.data.get("source", {}).get("name") or str(self.manifest.folder),
            "max_sequence_length": call.max_sequence_length,
        }
        parameters.update(metadata.describe(self.manifest, sched, call.images, call.masks))
        if self.adapters.active:
            parameters["loras"] = self.loras
        if self.vae_tiles and call.output_type != "latent":
            parameters["vae_tiling"] = self.vae_tiles.as_dict(tiled=self.vae_tiles.applies(latent_shape))
        if call.mode != "txt2img":
            parameters["strength"] = call.strength
        if call.prompts_2 != call.prompts:
            parameters["prompt_2"] = call.prompts_2
        parameters["true_cfg_scale"] = call.true_cfg_scale if call.true_cfg else 1.0  # infotext: Forge's "CFG scale"
        if call.true_cfg:
            if call.negatives_2 != call.negatives:
                parameters["negative_prompt_2"] = call.negatives_2
        if call.sigmas is not None:
            parameters["sigmas"] = [float(s) for s in call.sigmas]
        if call.guidance is None:
            parameters["guidance_embedded"] = False
        return parameters
