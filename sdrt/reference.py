"""The PyTorch reference: diffusers' own pipeline on the weights an sdrt ONNX folder came from.

`sdrt demo` and the benchmarks run it next to sdrt, in the same process, on the same inputs.

API::

    from sdrt.reference import load_reference, TorchReplay
    ref = load_reference("out/tiny")            # ONNX folder (or a Manifest); reads sdrt.json "source"
                                                #   (source="path/to/diffusers" overrides it)
    out = ref("a cat", num_inference_steps=4, guidance_scale=7.5, latents=noise_np, scheduler="DDIMScheduler")
    out.images                                  # float32 [N, H, W, 3] in [0, 1] (diffusers' output_type="np")
    out.timings                                 # sdrt.runtime.StageTimings: text_encoder, unet_steps,
                                                #   host_steps (steps 2..n), vae_encoder, vae_decoder, total

- The source: a preset (`build_pipeline(name, seed)`, the seed from the manifest, default 0) or a
  diffusers folder (`from_pretrained`, local files only). `safety_checker` is always None.
- The mode follows the arguments, like sdrt's: txt2img, img2img (`image`), inpainting (`image` and
  `mask_image`); diffusers' StableDiffusion(Img2Img|Inpaint)Pipeline on the same modules.
- `scheduler`: whatever `sdrt.runtime.Pipeline` accepts (None = the folder's, a name, a config);
  it is resolved by sdrt's numpy port first, then built as the diffusers class of the same name
  from that port's config — both sides run the same scheduler config.
- Randomness: `latents` (numpy [N, C, h, w]) is the injected initial noise, as in sdrt (txt2img and
  inpainting at strength 1). Everything else draws from `torch.Generator().manual_seed(seed)`;
  pass `TorchReplay(seed)` as sdrt's `generator=` and sdrt draws the same numbers in the same order.
- Image inputs: paths, PIL images or arrays, loaded exactly as sdrt loads them.
- ControlNets: `load_reference(folder, controlnet=[DIR, ...])` (exported ControlNet folders; their
  diffusers source folders are loaded) runs diffusers' ControlNet pipelines of the family
  (`Family.controlnet`); the call takes `control_image=` as sdrt does (diffusers' txt2img class calls
  it `image`).
- IP-Adapter: `load_reference(folder, ip_adapter=DIR)` (an exported IP-Adapter folder; diffusers'
  `load_ip_adapter` loads its source folder into this reference's own UNet); the call takes
  `ip_adapter_image=` and `ip_adapter_scale=` (diffusers' `set_ip_adapter_scale`).
"""

from __future__ import annotations

import inspect
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.manifest import Manifest
from sdrt.runtime import images as imageio
from sdrt.runtime.timing import StageTimings

PIPELINE_MODULES = ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "text_encoder_2", "tokenizer_2",
                    "text_encoder_3", "tokenizer_3", "transformer")
#: the modules that compute (moved to the device); the denoiser is the UNet or the transformer
COMPUTE_MODULES = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer")
#: optional modules and switches of the pipelines' constructors, all off (taken where a class has them)
OPTIONAL_MODULES = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False,
                    "image_encoder": None, "add_watermarker": False}


class TorchReplay:
    """A numpy-style generator whose `standard_normal` draws torch.randn from a seeded torch.Generator.

    Given to sdrt as `generator=`, it makes sdrt consume exactly the noise diffusers draws from
    `torch.Generator().manual_seed(seed)` (numpy's and torch's generators differ otherwise).
    """

    def __init__(self, seed: int):
        import torch

        self.generator = torch.Generator().manual_seed(int(seed))

    def standard_normal(self, size: Any = None, dtype: Any = np.float32) -> np.ndarray:
        import torch

        shape = (size,) if isinstance(size, int) else tuple(size or ())
        return torch.randn(shape, generator=self.generator, dtype=torch.float32).numpy().astype(dtype)


@dataclass
class ReferenceOutput:
    images: np.ndarray
    timings: StageTimings


class _Timed:
    """Wraps a module's forward to add its wall time to a stage (synchronising CUDA when used)."""

    def __init__(self, forward: Any, record: Any, sync: Any):
        self.forward, self.record, self.sync = forward, record, sync

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.sync()
        start = time.perf_counter()
        out = self.forward(*args, **kwargs)
        self.sync()
        self.record(time.perf_counter() - start)
        return out


def load_source_pipeline(manifest: Manifest, dtype: Any = None, source: str | os.PathLike | None = None) -> Any:
    """The diffusers pipeline the ONNX folder was exported from (same weights); `source` names a local
    copy of the diffusers folder when the manifest's path is elsewhere."""
    import diffusers

    recorded = manifest.data.get("source") or {}
    kind, name, path = recorded.get("kind"), recorded.get("name"), recorded.get("path")
    if source is not None:
        kind, path = "folder", str(source)
    if kind == "preset":
        from sdrt.export.presets import build_pipeline

        return build_pipeline(name, seed=int(recorded.get("seed", 0)), dtype=dtype)
    if kind == "single_file" and path and Path(path).is_file():  # converted again, as export did
        from sdrt.export.source import load

        src = load(str(path))
        cls = getattr(diffusers, src.class_name)
        accepted = inspect.signature(cls.__init__).parameters
        parts = {**src.modules, **src.tokenizers, "scheduler": getattr(diffusers, src.scheduler_config.get(
            "_class_name", "PNDMScheduler")).from_config(src.scheduler_config)}
        pipe = cls(**{k: v for k, v in {**OPTIONAL_MODULES, **parts}.items() if k in accepted})
        return pipe.to(dtype) if dtype is not None else pipe
    if kind == "folder" and path and Path(path).is_dir():
        cls = getattr(diffusers, manifest.pipeline.get("class_name", ""), diffusers.StableDiffusionPipeline)
        kwargs = {"torch_dtype": dtype} if dtype is not None else {}
        return cls.from_pretrained(path, safety_checker=None, requires_safety_checker=False,
                                   local_files_only=True, **kwargs)
    raise SdrtError(f"{manifest.folder}: the source it was exported from ({kind} {name or path!r}) is not "
                    f"available here, so there is no PyTorch reference: export from a preset or a local folder")


class Reference:
    """diffusers on the source weights, called like `sdrt.runtime.Pipeline`."""

    def __init__(self, pipe: Any, folder: Path, device: str = "cpu", controlnets: list[Any] | None = None,
                 ip_adapter: Manifest | None = None):
        import torch

        if ip_adapter is not None:
            source = Path((ip_adapter.data.get("source") or {}).get("path") or "")
            if not source.is_dir():
                raise SdrtError(f"{ip_adapter.folder}: the IP-Adapter folder it was exported from ({str(source)!r}) is "
                                f"not available here, so there is no PyTorch reference")
            pipe.load_ip_adapter(str(source), subfolder="", weight_name=ip_adapter.pipeline["weight_name"],
                                 local_files_only=True)

        self.device = torch.device(device)
        self.modules = {k: getattr(pipe, k, None) for k in PIPELINE_MODULES}
        if ip_adapter is not None:
            self.modules.update(image_encoder=pipe.image_encoder, feature_extractor=pipe.feature_extractor)
        for k in COMPUTE_MODULES:
            if self.modules[k] is not None:
                self.modules[k].to(self.device)
        self.config = {k: pipe.config[k] for k in ("force_zeros_for_empty_prompt", "requires_aesthetics_score")
                       if k in pipe.config}
        self.class_name = type(pipe).__name__
        self.family = spec.family_of_pipeline(self.class_name, dict(pipe.config))
        if self.family is None:
            raise SdrtError(f"{self.class_name} is no pipeline class of a family sdrt knows: no reference for it")
        self.folder = folder
        self.scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        self.controlnets = [c.to(self.device) for c in controlnets or []]

    def diffusers_scheduler(self, scheduler: Any = None) -> Any:
        """The diffusers class of sdrt's resolved scheduler, from the same config."""
        import diffusers

        from sdrt.runtime.schedulers import get_scheduler

        port = scheduler if hasattr(scheduler, "set_timesteps") else get_scheduler(
            self.scheduler_config if scheduler is None else scheduler, self.scheduler_config)
        config = {k: v for k, v in dict(port.config).items() if not k.startswith("_")}
        return getattr(diffusers, type(port).__name__).from_config(config)

    def _pipeline(self, mode: str, scheduler: Any) -> Any:
        import diffusers

        name = self.family.controlnet.get(mode) if self.controlnets else self.family.mode_class(self.class_name, mode)
        if name is None:
            raise SdrtError(f"diffusers has no {mode} pipeline for a {self.class_name}: no reference for {mode}")
        cls = getattr(diffusers, name)
        accepted = inspect.signature(cls.__init__).parameters
        modules = {**self.modules, "scheduler": self.diffusers_scheduler(scheduler)}
        if self.controlnets:
            modules["controlnet"] = (self.controlnets[0] if len(self.controlnets) == 1
                                     else diffusers.MultiControlNetModel(self.controlnets))
        options = {**OPTIONAL_MODULES, **self.config, **modules}
        pipe = cls(**{k: v for k, v in options.items() if k in accepted})
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def __call__(self, prompt: Any, negative_prompt: Any = None, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, height: int | None = None, width: int | None = None,
                 num_images_per_prompt: int = 1, seed: int = 0, latents: np.ndarray | None = None,
                 scheduler: Any = None, image: Any = None, strength: float | None = None, mask_image: Any = None,
                 eta: float = 0.0, output_type: str = "np", **extra: Any) -> ReferenceOutput:
        """`extra`: the pipeline's own further arguments (prompt_2, original_size, guidance_rescale,
        clip_skip, denoising_end, ...), passed through; an `image` given as latents [N, C, h, w] is
        passed as a tensor (the refiner's hand-off)."""
        import torch

        mode = "inpaint" if mask_image is not None else "img2img" if image is not None else "txt2img"
        if latents is not None and (mode == "img2img" or (mode == "inpaint" and (strength or 1.0) < 1.0)):
            raise SdrtError(f"{mode} at strength {strength}: diffusers cannot take injected latents here; "
                            f"pass seed= here and generator=TorchReplay(seed) to sdrt")
        pipe = self._pipeline(mode, scheduler)
        named = inspect.signature(pipe.__call__).parameters
        if "ip_adapter_scale" in extra:
            pipe.set_ip_adapter_scale(float(extra.pop("ip_adapter_scale")))
        if extra.get("ip_adapter_image") is not None:
            extra["ip_adapter_image"] = imageio.load_images(extra["ip_adapter_image"], "ip_adapter_image")[0]
        if isinstance(negative_prompt, str) and not isinstance(prompt, str):
            negative_prompt = [negative_prompt] * len(prompt)
        kwargs: dict[str, Any] = dict(
            prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt, eta=eta,
            generator=torch.Generator().manual_seed(int(seed)), output_type=output_type, **extra,
        )
        for key in ("negative_prompt", "eta"):  # LCM pipelines take neither, Flux's no eta
            if key not in named:
                kwargs.pop(key)
        if isinstance(image, np.ndarray) and image.ndim == 4:
            kwargs["image"] = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
            if strength is not None:
                kwargs["strength"] = strength
        elif image is not None:
            pictures = imageio.load_images(image, "image")
            kwargs["image"] = pictures[0] if len(pictures) == 1 else pictures
            if strength is not None:
                kwargs["strength"] = strength
            height = height or pictures[0].height
            width = width or pictures[0].width
        if mask_image is not None:
            masks = imageio.load_images(mask_image, "mask")
            kwargs["mask_image"] = masks[0] if len(masks) == 1 else masks
        if mode != "img2img" or "height" in named:  # Flux's img2img takes the size (its default is 1024 px)
            kwargs["height"], kwargs["width"] = height, width
        control = kwargs.pop("control_image", None)
        if control is not None:
            pictures = [imageio.load_images(c, "control image") for c in
                        (control if isinstance(control, (list, tuple)) and len(self.controlnets) > 1 else [control])]
            given = [p[0] if len(p) == 1 else p for p in pictures]
            kwargs["image" if mode == "txt2img" else "control_image"] = given[0] if len(given) == 1 else given
            if mode == "img2img":
                kwargs["height"], kwargs["width"] = height, width
        if latents is not None:
            kwargs["latents"] = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32)).to(self.device)
        timings = StageTimings()
        step_marks: list[float] = []

        def on_step_end(_pipe: Any, _i: int, _t: Any, callback_kwargs: dict) -> dict:
            step_marks.append(time.perf_counter())
            return callback_kwargs

        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        def add_to(stage: str) -> Any:
            return lambda seconds: setattr(timings, stage, getattr(timings, stage) + seconds)

        encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
                                getattr(pipe, "text_encoder_3", None)) if e is not None]
        denoiser = getattr(pipe, "unet", None) or pipe.transformer
        hooks = [*((e, "forward", add_to("text_encoder")) for e in encoders),
                 (denoiser, "forward", timings.unet_steps.append),
                 (pipe.vae, "decode", add_to("vae_decoder")),
                 (pipe.vae, "encode", add_to("vae_encoder"))]
        originals = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in hooks]
        for obj, attr, record in hooks:
            setattr(obj, attr, _Timed(getattr(obj, attr), record, sync))
        try:
            start = time.perf_counter()
            with torch.inference_mode():
                out = pipe(**kwargs, callback_on_step_end=on_step_end)
            timings.total = time.perf_counter() - start
        finally:
            for obj, attr, original in originals:
                if attr in obj.__dict__:
                    delattr(obj, attr)
        timings.host_steps = [b - a - u for a, b, u in zip(step_marks, step_marks[1:], timings.unet_steps[1:])]
        images = out.images.cpu().numpy() if hasattr(out.images, "cpu") else out.images
        return ReferenceOutput(np.asarray(images, dtype=np.float32), timings)


def load_controlnet_source(folder: str | os.PathLike, dtype: Any = None) -> Any:
    """The diffusers ControlNetModel an exported ControlNet folder came from (its recorded source folder)."""
    import diffusers

    manifest = Manifest.load(folder)
    path = (manifest.data.get("source") or {}).get("path")
    if not path or not Path(path).is_dir():
        raise SdrtError(f"{folder}: the ControlNet folder it was exported from ({path!r}) is not available here, "
                        f"so there is no PyTorch reference")
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    return diffusers.ControlNetModel.from_pretrained(path, local_files_only=True, **kwargs).eval()


def load_reference(folder: str | os.PathLike | Manifest, device: str = "cpu", dtype: Any = None,
                   source: str | os.PathLike | None = None,
                   controlnet: str | os.PathLike | list | None = None,
                   ip_adapter: str | os.PathLike | None = None) -> Reference:
    """The PyTorch reference for an sdrt ONNX folder (fp32 on the CPU by default), with the diffusers
    ControlNets of exported ControlNet folders when `controlnet` names any, and the IP-Adapter of an
    exported IP-Adapter folder (`ip_adapter`)."""
    manifest = folder if isinstance(folder, Manifest) else Manifest.load(folder)
    folders = [] if controlnet is None else list(controlnet) if isinstance(controlnet, (list, tuple)) else [controlnet]
    nets = [load_controlnet_source(f, dtype=dtype) for f in folders]
    return Reference(load_source_pipeline(manifest, dtype=dtype, source=source), manifest.folder, device=device,
                     controlnets=nets, ip_adapter=None if ip_adapter is None else Manifest.load(ip_adapter))
