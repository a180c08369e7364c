"""ControlNets in the torch-free pipeline: loaded beside the base, checked against it, run every step.

`ControlNets.load(base, backend, folders)` opens exported ControlNet folders (`sdrt export` of a
diffusers ControlNet folder) on the pipeline's backend; each must fit the base (family,
cross-attention width, latent channels, the control image's downscale, the residual layout), or
it is one line naming what differs. The base's UNet is then the residual-taking graph
(`sdrt.residual_graph`, made from the export without re-export).

A call (`check` -> `ControlCall`, then `bind` once per call, then `step` before every UNet run)
follows diffusers' ControlNet pipelines:

- the control images are resized to the output size (PIL, Lanczos), RGB in [0, 1], one per
  ControlNet; a single image serves every image of the call, else one per prompt (repeated per
  image of that prompt); under guidance both halves get it, except in guess mode;
- per step, ControlNet k runs when its window [start, end] covers the step
  (``i / steps >= start and (i + 1) / steps <= end``) on the same scaled latents, timestep and
  text embeddings as the UNet; its residuals are scaled by its scale (guess mode: diffusers' ramp
  from 0.1 to 1 times the scale) and summed over the ControlNets into the UNet's bound residual
  inputs; outside every window they are zeros (what diffusers' scale 0 gives);
- guess mode under guidance: the ControlNets see only the conditional half, the unconditional half
  gets zero residuals.

Buffers: each ControlNet engine is prepared once per call's shapes; the residual sums live in host
arrays allocated once per call: nothing is allocated inside the loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from sdrt.engines.base import Backend, Engine
from sdrt.errors import SdrtError
from sdrt.runtime.arguments import real_in_range
from sdrt.manifest import CONTROLNET_KIND, Manifest, load_kind
from sdrt.runtime import images as imageio
from sdrt.spec import N

COMPONENT = "controlnet"


@dataclass
class LoadedControlNet:
    """One ControlNet folder on the pipeline's backend."""

    path: Path
    manifest: Manifest
    engine: Engine

    @property
    def name(self) -> str:
        """What the PNG metadata and the API call it: its source folder's name, else its own."""
        return (self.manifest.data.get("source") or {}).get("name") or self.path.name


def open_controlnet(folder: str | os.PathLike) -> Manifest:
    """A ControlNet folder's manifest; a model folder or anything else is one line."""
    return load_kind(folder, CONTROLNET_KIND, lambda manifest: (
        f"{folder} is a model folder, not a ControlNet: export a diffusers ControlNet folder "
        f"(config.json of a ControlNetModel) with `sdrt export --model CONTROLNET_DIR --out DIR`"))


def check_fits(base: Manifest, controlnet: Manifest) -> None:
    """One line naming the first way `controlnet` does not fit `base` (nothing when it does)."""
    b, c = base.pipeline, controlnet.pipeline
    where = f"the ControlNet {controlnet.folder}"
    if base.family != controlnet.family:
        raise SdrtError(f"{where} is for {controlnet.family_spec.title} bases, {base.folder} is an "
                        f"{base.family_spec.title} model: use a ControlNet made for its family")
    pairs = (("cross-attention width", "text_hidden_size"), ("latent channels", "latent_channels"),
             ("image-to-latent scale factor", "vae_scale_factor"))
    for label, key in pairs:
        if int(b[key]) != int(c[key]):
            raise SdrtError(f"{where} has {label} {c[key]}, the base {base.folder} has {b[key]}: use a "
                            f"ControlNet made for this base (e.g. an SD 1.5 ControlNet for SD 1.x, an SD 2.1 one "
                            f"for SD 2.x)")
    for symbol in sorted(set(c.get("dims") or {}) & set(b.get("dims") or {})):
        if int(c["dims"][symbol]) != int(b["dims"][symbol]):
            raise SdrtError(f"{where} has {symbol} = {c['dims'][symbol]}, the base has {b['dims'][symbol]}: use a "
                            f"ControlNet made for this base")
    if base.residuals is not None and controlnet.residuals != base.residuals:
        raise SdrtError(f"{where} gives {controlnet.residuals.describe()}; the base's UNet takes "
                        f"{base.residuals.describe()}: use a ControlNet made for this base's architecture")


class ControlNets:
    """The ControlNets a pipeline runs with, in the order the call's lists refer to them."""

    def __init__(self, loaded: list[LoadedControlNet]):
        self.loaded = loaded
        self.kept: list[LoadedControlNet] = []  # loaded before, not in this set (reused by `pick`)

    @classmethod
    def load(cls, base: Manifest, backend: Backend, folders: Sequence[str | os.PathLike]) -> "ControlNets":
        manifests = [open_controlnet(folder) for folder in folders]  # every folder checked before any engine
        for manifest in manifests:
            check_fits(base, manifest)
        loaded: list[LoadedControlNet] = []
        try:
            for folder, manifest in zip(folders, manifests):
                loaded.append(LoadedControlNet(Path(folder), manifest, backend.load(manifest, COMPONENT)))
        except BaseException:
            for item in loaded:
                item.engine.close()
            raise
        return cls(loaded)

    @classmethod
    def pick(cls, current: "ControlNets", base: Manifest, backend: Backend,
             folders: Sequence[str | os.PathLike]) -> "ControlNets":
        """These folders' ControlNets, reusing the engines `current` (and what it kept) has loaded."""
        pool = {str(Path(item.path).resolve()): item for item in (*current.loaded, *current.kept)}
        missing = [f for f in dict.fromkeys(str(Path(f).resolve()) for f in folders) if f not in pool]
        if missing:
            for item in cls.load(base, backend, missing).loaded:
                pool[str(Path(item.path).resolve())] = item
        chosen = [pool[str(Path(f).resolve())] for f in folders]
        picked = cls(chosen)
        picked.kept = [item for item in pool.values() if all(item is not c for c in chosen)]
        return picked

    def __len__(self) -> int:
        return len(self.loaded)

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.loaded]

    def close(self) -> None:
        closed: set[int] = set()
        for item in (*self.loaded, *self.kept):
            if id(item.engine) not in closed:
                closed.add(id(item.engine))
                item.engine.close()
        self.loaded, self.kept = [], []


# -- step 1: the call's ControlNet arguments ---------------------------------------------------------
@dataclass
class ControlCall:
    """The checked ControlNet arguments of one call (one entry per ControlNet)."""

    images: list[list[Image.Image]]   # per ControlNet: 1 image, or one per prompt, at the output size
    scales: list[float]
    starts: list[float]
    ends: list[float]
    guess_mode: bool

    def describe(self, names: list[str]) -> list[dict[str, Any]]:
        """What the PNG metadata and the API info record, one entry per ControlNet (A1111's unit fields)."""
        return [{"model": name, "weight": scale, "guidance_start": start, "guidance_end": end,
                 "guess_mode": self.guess_mode}
                for name, scale, start, end in zip(names, self.scales, self.starts, self.ends)]


def _per_controlnet(label: str, value: Any, count: int) -> list[Any]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise SdrtError(f"{label} has {len(values)} values for {count} ControlNets: pass one value for all, or "
                        f"exactly one per ControlNet")
    return values


def check(count: int, arguments: dict[str, Any], *, prompts: int, height: int, width: int,
          default_scale: float = 1.0) -> ControlCall | None:
    """Step 1's ControlNet part: None without ControlNets; every bad value one line. `default_scale`: the
    scale when the call gives none (diffusers' ControlNet pipelines' default differs by mode)."""
    image = arguments.get("control_image")
    if count == 0:
        if image is not None:
            raise SdrtError("control_image was given but the pipeline has no ControlNet: load one with "
                            "Pipeline.load(..., controlnet=DIR) (--controlnet DIR)")
        return None
    if image is None:
        raise SdrtError(f"the pipeline has {count} ControlNet(s): pass control_image= (--control-image), one "
                        f"per ControlNet")
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if count == 1 and len(items) > 1 and not any(isinstance(i, (list, tuple)) for i in items):
        items = [items]  # one ControlNet, one image per prompt
    if len(items) != count:
        raise SdrtError(f"{len(items)} control images for {count} ControlNets: pass exactly one control image "
                        f"(or one list of images) per ControlNet")
    images = []
    for entry in items:
        loaded = imageio.load_images(entry, "control image")
        if len(loaded) not in (1, prompts):
            raise SdrtError(f"{len(loaded)} control images for {prompts} prompts: pass 1 control image per "
                            f"ControlNet, or one per prompt")
        images.append([resize(picture, height, width) for picture in loaded])
    scales = [real_in_range("controlnet_conditioning_scale", s, 0.0, 100.0, "use a value >= 0 (1.0 is usual)")
              for s in _per_controlnet("controlnet_conditioning_scale", default_scale if arguments.get(
                  "controlnet_conditioning_scale") is None else arguments["controlnet_conditioning_scale"], count)]
    starts = [real_in_range("control_guidance_start", s, 0.0, 1.0, "use a fraction of the steps in [0, 1)")
              for s in _per_controlnet("control_guidance_start", arguments.get("control_guidance_start", 0.0), count)]
    ends = [real_in_range("control_guidance_end", e, 0.0, 1.0, "use a fraction of the steps in (0, 1]")
            for e in _per_controlnet("control_guidance_end", arguments.get("control_guidance_end", 1.0), count)]
    for start, end in zip(starts, ends):
        if start >= end:
            raise SdrtError(f"control_guidance_start {start:g} must be below control_guidance_end {end:g}")
    return ControlCall(images, scales, starts, ends, bool(arguments.get("guess_mode", False)))


def resize(picture: Image.Image, height: int, width: int) -> Image.Image:
    """diffusers' control image processor: RGB, resized to the output size with Lanczos (same size: as is)."""
    picture = picture.convert("RGB")
    return picture if picture.size == (width, height) else picture.resize((width, height), Image.LANCZOS)


def control_pixels(pictures: list[Image.Image], *, images: int, per_prompt: int) -> np.ndarray:
    """[images, 3, H, W] float32 in [0, 1]: one picture serves every image, else each prompt's picture
    is repeated for its images (diffusers' `repeat_interleave`)."""
    arrays = np.stack([np.asarray(p, dtype=np.float32) / 255.0 for p in pictures]).transpose(0, 3, 1, 2)
    repeat = images if len(pictures) == 1 else per_prompt
    return np.ascontiguousarray(np.repeat(arrays, repeat, axis=0))


# -- steps 5 and 6: bound once per call, run every step ---------------------------------------------
class ControlStep:
    """The loop's per-step hook: run the ControlNets whose window covers the step, write the UNet's residuals."""

    def __init__(self, nets: ControlNets, call: ControlCall, unet: Engine, fixed: dict[str, np.ndarray], *,
                 images: int, per_prompt: int, guidance: bool, steps: int, latent_channels: int, dims: dict[str, int]):
        self.nets, self.call, self.unet, self.steps = nets, call, unet, steps
        self.latent_channels = latent_channels
        self.names = nets.loaded[0].manifest.residuals.names if nets.loaded else ()
        # guess mode under guidance: the ControlNets see the conditional half only (the second)
        self.rows = slice(images, 2 * images) if call.guess_mode and guidance else slice(0, None)
        batch = dims["B"]
        rows = images if call.guess_mode and guidance else batch
        self.sums = {name: np.zeros(unet.shapes_for(dims)[name], dtype=np.float32) for name in self.names}
        self.scale_vectors = []
        self.pixels = self._pixel_sets(call, images, per_prompt, guidance)
        for item, pixels, scale in zip(nets.loaded, self.pixels, call.scales):
            engine = item.engine
            engine.prepare({**dims, "B": rows})
            engine.set_input(N.CONTROLNET_COND, pixels)  # again each step when an engine is shared
            for name, value in fixed.items():
                engine.set_input(name, value[self.rows])
            count = len(self.names)
            ramp = (np.logspace(-1.0, 0.0, count).astype(np.float32) if call.guess_mode
                    else np.ones(count, dtype=np.float32))
            self.scale_vectors.append((ramp * np.float32(scale)).astype(np.float32))
        engines = [id(item.engine) for item in nets.loaded]
        self.shared = len(set(engines)) != len(engines)  # one folder in two units: one engine, set per step
        self.zeroed = False
        self._write_zeros()

    @staticmethod
    def _pixel_sets(call: ControlCall, images: int, per_prompt: int, guidance: bool) -> list[np.ndarray]:
        sets = []
        for pictures in call.images:
            pixels = control_pixels(pictures, images=images, per_prompt=per_prompt)
            sets.append(np.concatenate([pixels, pixels]) if guidance and not call.guess_mode else pixels)
        return sets

    def _write_zeros(self) -> None:
        if not self.zeroed:
            for name in self.names:
                self.sums[name].fill(0.0)
                self.unet.set_input(name, self.sums[name])
            self.zeroed = True

    def active(self, index: int) -> list[int]:
        """The ControlNets whose guidance window covers step `index` (diffusers' controlnet_keep)."""
        n = self.steps
        return [k for k, (start, end) in enumerate(zip(self.call.starts, self.call.ends))
                if not (index / n < start or (index + 1) / n > end)]

    def __call__(self, index: int, model_in: np.ndarray, timestep: np.ndarray) -> None:
        """Before UNet run `index`: `model_in` holds the scaled latents (its first C channels), `timestep` the step's."""
        active = self.active(index)
        if not active:
            self._write_zeros()
            return
        C = self.latent_channels
        for position, k in enumerate(active):
            engine = self.nets.loaded[k].engine
            engine.set_input(N.CONDITIONING_SCALE, self.scale_vectors[k])
            if self.shared:
                engine.set_input(N.CONTROLNET_COND, self.pixels[k])
            out = engine.run({N.SAMPLE: model_in[self.rows, :C], N.TIMESTEP: timestep[self.rows]})
            for name in self.names:
                target = self.sums[name][self.rows]
                if position == 0:
                    np.copyto(target, out[name], casting="same_kind")
                else:
                    np.add(target, out[name], out=target, casting="same_kind")
        for name in self.names:
            self.unet.set_input(name, self.sums[name])
        self.zeroed = False


def zero_residuals(unet: Engine) -> None:
    """A residual-taking UNet called without ControlNets: its residual inputs are zeros (a previous call's
    residuals stay bound otherwise)."""
    for tensor in unet.spec.inputs:
        if tensor.name.startswith(N.DOWN_BLOCK_RESIDUAL) or tensor.name == N.MID_BLOCK_RESIDUAL:
            shape = unet.shapes_for(unet.dims or {})[tensor.name]
            unet.set_input(tensor.name, np.zeros(shape, dtype=np.float32))
