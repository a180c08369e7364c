"""The torch-free pipeline: what every model family's generation shares, and `Pipeline.load`.

`Pipeline.load(folder, backend=...)` opens an exported folder and returns the pipeline class of its
family (the family table's `runtime`: `RUNTIMES` below; SD 1.x/2.x, SDXL and LCM run on
`sdrt.runtime.unet_pipeline.UNetPipeline`). The base class holds what families share: the engines on
one backend, the tokenizers, LoRAs, VAE encoding and decoding (tiled on request), the init image and
mask inputs, the output size, and the call's lock.

- latent channels, VAE scale factor, scaling factor and the default size come from `sdrt.json`;
- each engine allocates its buffers once per shape set: nothing is allocated inside a loop.

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

import importlib
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sdrt.engines import quantized
from sdrt.engines.base import Backend, Engine, backend_class, candidates, with_precision
from sdrt.errors import EngineMissing, SdrtError
from sdrt.manifest import PIPELINE_KIND, Manifest
from sdrt.runtime import conditioning, images as imageio, memory_guard, vae_tiling as tiling
from sdrt.runtime.seeds import PerImageGenerator
from sdrt.runtime.timing import StageTimings
from sdrt.spec import N

#: the family table's `runtime` -> the class that generates for it ("module:Class", imported on use)
RUNTIMES: dict[str, str] = {"unet": "sdrt.runtime.unet_pipeline:UNetPipeline",
                            "sd3": "sdrt.runtime.sd3_pipeline:SD3Pipeline",
                            "flux": "sdrt.runtime.flux_pipeline:FluxPipeline"}


def _folders(controlnet: Any) -> list[Any]:
    """`controlnet=`: None, one folder, or a list of folders."""
    if controlnet is None:
        return []
    return list(controlnet) if isinstance(controlnet, (list, tuple)) else [controlnet]


def runtime_class(name: str) -> type["Pipeline"]:
    module, _, cls = RUNTIMES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def load_tokenizers(manifest: Manifest) -> dict[str, Any]:
    """The tokenizers of the text encoders this model has, by folder (CLIP's, or T5's where the family
    table says so)."""
    from sdrt.runtime.t5_tokenizer import T5Tokenizer
    from sdrt.runtime.tokenizer import ClipTokenizer

    family = manifest.family_spec
    tokenizers: dict[str, Any] = {}
    for encoder in manifest.spec.text_encoders:
        folder = family.text_encoders[encoder][0]
        kind = T5Tokenizer if family.tokenizer_kinds.get(folder) == "t5" else ClipTokenizer
        tokenizers[folder] = kind.from_folder(Path(manifest.folder) / folder)
    return tokenizers


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
    """Engines for one ONNX model folder; `load` gives the family's subclass, whose call makes images."""

    def __init__(self, manifest: Manifest, backend: Backend, tokenizers: dict[str, Any],
                 scheduler_config: dict[str, Any], vae: Manifest | None = None, *, low_memory: bool = False):
        self.manifest = manifest
        self.vae_manifest = vae  # another export's VAE (`vae=` at load, `use_vae`); None: the model's own
        self.backend = backend
        self.tokenizers = tokenizers  # tokenizer folder -> tokenizer (the family's: SDXL has two)
        self.scheduler_config = scheduler_config
        self.model_spec = manifest.spec
        self.family_spec = self.model_spec.family
        self.family = self.family_spec.name
        p = manifest.pipeline
        if p.get("scaling_factor") is None:
            raise SdrtError(f"{manifest.folder}/sdrt.json lacks pipeline.scaling_factor: export the model again "
                            f"with --force")
        vae_facts = (vae or manifest).pipeline  # the latent scale belongs to the VAE that decodes
        self.scaling_factor = float(vae_facts["scaling_factor"])
        self.shift_factor = float(vae_facts.get("shift_factor") or 0.0)
        self.vae_scale_factor = int(p["vae_scale_factor"])
        self.latent_channels = int(p["latent_channels"])
        self.unet_in_channels = int(p["unet_in_channels"])
        self.time_cond_dim = self.manifest.values.get("G") if "timestep_cond" in self.model_spec.variants else None
        self.denoiser = self.family_spec.denoiser
        self.engines: dict[str, Engine] = {}
        # the denoiser's diffusers config, for the backend's attention-memory estimate
        self._denoiser_config = memory_guard.denoiser_config(manifest.folder / self.denoiser)
        self._lock = threading.RLock()  # one call at a time: the engines' bound buffers are shared
        self.vae_tiles: tiling.VaeTiles | None = None  # None: decode whole (see enable_vae_tiling)
        self.low_memory = low_memory  # text encoders and denoiser loaded in turn (sdrt.runtime.low_memory)

        from sdrt.runtime.controlnet import ControlNets

        self.controlnets = ControlNets([])  # set by load(controlnet=...): run before the UNet every step
        self.ip_adapter: Any = None  # set by load(ip_adapter=...): sdrt.runtime.ip_adapter.IPAdapter
        try:
            preload = ("vae_decoder",) if low_memory else (*self.model_spec.text_encoders, self.denoiser, "vae_decoder")
            for component in preload:  # a broken folder fails here
                self.engine(component)
        except BaseException:
            self.close()
            raise
        from sdrt.runtime.lora import Adapters
        from sdrt.runtime.textual_inversion import TextualInversions

        self.adapters = Adapters(manifest)
        self.embeddings = TextualInversions()

    @classmethod
    def load(cls, folder: str | os.PathLike, backend: str = "auto", precision: str | None = None,
             verify: bool = False, loras: Sequence[Any] = (), vae_tiling: bool = False,
             vae_tile_size: int | None = None, vae: str | os.PathLike | None = None, low_memory: bool | str = "auto",
             controlnet: Any = None, ip_adapter: Any = None, without: Sequence[str] = (),
             **backend_options: Any) -> "Pipeline":
        """Open an exported folder on a backend, as its family's pipeline class; options go to the backend
        (its declared ones only).
        ``precision``: f32 | bf16 | f16, the run-time precision (bf16/f16: openvino only).

        "auto" tries the usable backends that take the options, fastest first; one without a built
        engine for this folder (TensorRT before `sdrt build`, unless auto_build=True) is skipped
        with a one-line note on stderr. `verify=True` first checks every component's sha256 against
        the one export recorded (reads every weight once; a changed file is one line naming it).
        `loras`: LoRA files to apply, each a path or a (path, scale) pair (see `set_loras`).
        `vae_tiling` / `vae_tile_size`: see `enable_vae_tiling`. `vae`: another export's VAE to decode and
        encode with (a folder holding vae_decoder, e.g. the EMA or MSE fine-tune; `sdrt.runtime.vae_swap`).
        `low_memory`: load the text encoders and the denoiser in turn, never together ("auto": when they would not fit the memory available;
        sdrt.runtime.low_memory); LoRAs need it off.
        `controlnet`: an exported ControlNet folder, or a list of them (each call then takes
        `control_image=`, one per ControlNet; see sdrt.runtime.controlnet); the UNet runs as the
        residual-taking graph made from the export (sdrt.residual_graph), not re-exported.
        `ip_adapter`: an exported IP-Adapter folder (each call then takes `ip_adapter_image=`;
        `set_ip_adapter_scale`; see sdrt.runtime.ip_adapter); the UNet runs as the graph that takes
        its keys and values (sdrt.ip_graph), not re-exported.
        `without`: optional components to leave unloaded, e.g. ["text_encoder_3"] (SD3 without T5, as
        diffusers' text_encoder_3=None: 9.5 GB less for SD3.5; Manifest.without).
        """
        from sdrt.runtime.vae_swap import vae_manifest

        from sdrt.runtime import optimum_view

        if optimum_view.is_optimum_folder(folder):  # read as it is, through an sdrt view of it
            folder = optimum_view.view_of(folder)
        manifest = Manifest.load(folder).without(without)
        if manifest.kind != PIPELINE_KIND:  # a ControlNet or IP-Adapter folder given as the model
            label = {"controlnet": "a ControlNet", "ip_adapter": "an IP-Adapter"}.get(manifest.kind, f"a {manifest.kind}")
            raise SdrtError(f"{folder} is {label} folder, not a model: load a model folder and pass this one as "
                            f"{manifest.kind}= (--{manifest.kind.replace('_', '-')} DIR)")
        tiles = tiling.from_options(manifest.pipeline, vae_tiling, vae_tile_size)  # fails before loading
        vae_export = vae_manifest(manifest, vae) if vae is not None else None
        if verify:
            manifest.verify()
        config_path = Path(folder) / "scheduler" / "scheduler_config.json"
        try:
            scheduler_config = json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise SdrtError(f"{config_path} is missing or unreadable ({e}): export the model again with --force")
        tokenizers = load_tokenizers(manifest)
        family_class = runtime_class(manifest.family_spec.runtime)
        from sdrt.runtime import low_memory as lean

        low_memory = lean.decide(manifest, low_memory)
        if low_memory and loras:
            raise SdrtError(lean.NO_LORA)
        controlnets = _folders(controlnet)
        if controlnets:
            from sdrt.residual_graph import residual_manifest
            from sdrt.runtime.controlnet import check_fits, open_controlnet

            for folder in controlnets:  # a ControlNet that does not fit fails before any engine loads
                check_fits(manifest, open_controlnet(folder))
            manifest = residual_manifest(manifest)
        ip_folder = None
        if ip_adapter is not None:
            from sdrt.ip_graph import ip_manifest
            from sdrt.runtime.ip_adapter import check_fits as ip_adapter_fits, open_ip_adapter

            ip_folder = open_ip_adapter(ip_adapter)
            manifest = ip_manifest(manifest, ip_adapter_fits(manifest, ip_folder))
        backend_options = with_precision(precision, backend_options)
        names = candidates(backend, backend_options)
        quantized.check_source(manifest)
        if backend == "auto":  # a quantized folder: only the backends that run its scheme
            names = quantized.filter_candidates(manifest.folder, manifest.components, names)
        else:
            quantized.check_backend(manifest.folder, manifest.components, names[0])
        for i, name in enumerate(names):
            try:
                options = with_precision(precision, backend_options, backend_class(name))
                pipe = family_class(manifest, backend_class(name)(**options), tokenizers, scheduler_config,
                                    vae=vae_export, low_memory=low_memory)
            except EngineMissing as e:
                if i + 1 == len(names):
                    raise
                print(f"sdrt: backend auto: not {name} ({e}); using {names[i + 1]}", file=sys.stderr, flush=True)
                continue
            break
        else:
            raise AssertionError("unreachable: candidates() returns at least one backend")
        pipe.vae_tiles = tiles
        if controlnets:
            from sdrt.runtime.controlnet import ControlNets

            try:
                pipe.controlnets = ControlNets.load(manifest, pipe.backend, controlnets)
            except BaseException:
                pipe.close()
                raise
        if ip_folder is not None:
            from sdrt.runtime.ip_adapter import IPAdapter

            try:
                pipe.ip_adapter = IPAdapter.load(ip_folder, pipe.backend, ip_adapter, pipe.family)
            except BaseException:
                pipe.close()
                raise
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
            if self.low_memory and loras:
                from sdrt.runtime.low_memory import NO_LORA

                raise SdrtError(NO_LORA)
            self.adapters.apply(self.backend, self.engines, list(loras))

    def load_textual_inversion(self, path: str | os.PathLike, token: str | None = None) -> str:
        """Load a textual-inversion embedding (the web UI's .pt/.safetensors, or diffusers'), named in prompts
        by `token` (default: the file's name, or the token a diffusers file stores); returns the name.
        The text encoders' token tables grow at run time, nothing is re-exported
        (`sdrt.runtime.textual_inversion`). A file that does not fit is one line, the pipeline as it was."""
        from sdrt.runtime import textual_inversion as ti

        with self._lock:
            embedding = ti.read(path, self.model_spec.text_encoders, token)
            for component, vectors in embedding.vectors.items():
                record = ti.table_record(self.adapters.weight_map(component))
                if vectors.shape[-1] != record["shape"][1]:
                    raise SdrtError(f"{path} has {vectors.shape[-1]}-wide vectors, {component} of {self.manifest.folder}"
                                    f" takes {record['shape'][1]}: the embedding was trained for another model")
            vocabulary = ti.table_record(self.adapters.weight_map(self.model_spec.text_encoders[0]))["shape"][0]
            before = dict(self.embeddings.embeddings)
            self.embeddings.add(embedding, vocabulary)
            try:
                ti.install(self)
            except BaseException:
                self.embeddings.embeddings = before
                self.embeddings._renumber(vocabulary)
                raise
            return embedding.name

    def unload_textual_inversion(self, tokens: str | Sequence[str] | None = None) -> None:
        """Forget these embeddings (by name; None: every one): the text encoders get their tables back
        without them. An unknown name is one line listing the loaded ones."""
        from sdrt.runtime import textual_inversion as ti

        with self._lock:
            names = [tokens] if isinstance(tokens, str) else list(tokens) if tokens is not None else None
            unknown = [n for n in names or [] if n not in self.embeddings.embeddings]
            if unknown:
                raise SdrtError(f"no embedding named {unknown[0]!r} is loaded (loaded: "
                                f"{', '.join(self.embeddings.embeddings) or 'none'})")
            if names is None:
                self.embeddings.clear()
            else:
                vocabulary = ti.table_record(self.adapters.weight_map(self.model_spec.text_encoders[0]))["shape"][0]
                for name in names:
                    del self.embeddings.embeddings[name]
                self.embeddings._renumber(vocabulary)
            ti.install(self)

    def use_vae(self, folder: str | os.PathLike | None) -> None:
        """Decode and encode with another export's VAE from now on (None: the model's own)."""
        from sdrt.runtime.vae_swap import vae_manifest

        with self._lock:
            new = vae_manifest(self.manifest, folder) if folder is not None else None
            old = self.vae_manifest
            if (new and new.folder.resolve()) == (old and old.folder.resolve()):
                return
            for component in ("vae_decoder", "vae_encoder"):
                engine = self.engines.pop(component, None)
                if engine is not None:
                    engine.close()
            self.vae_manifest = new
            facts = (new or self.manifest).pipeline
            self.scaling_factor = float(facts["scaling_factor"])
            self.shift_factor = float(facts.get("shift_factor") or 0.0)
            self.engine("vae_decoder")  # a broken VAE fails here, not mid-call

    def set_controlnets(self, folders: Sequence[Any]) -> None:
        """Run with exactly these exported ControlNet folders from now on ([]: none). Engines of folders
        used before are kept and reused (a server switches sets per batch); the first ControlNet makes
        the UNet the residual-taking graph (before any LoRA: load ControlNets first)."""
        from sdrt.runtime.controlnet import ControlNets

        with self._lock:
            folders = _folders(list(folders))
            if folders and not self.manifest.pipeline.get("residual_inputs"):
                if self.adapters.active:
                    raise SdrtError("load ControlNets before LoRAs (Pipeline.load(..., controlnet=...)), or clear "
                                    "the LoRAs first: the UNet is reloaded for ControlNets")
                from sdrt.residual_graph import residual_manifest
                from sdrt.runtime.controlnet import check_fits, open_controlnet

                for folder in folders:
                    check_fits(self.manifest, open_controlnet(folder))
                derived = residual_manifest(self.manifest)
                engine = self.backend.load(derived, self.denoiser)  # fails before the old one is closed
                self.engines.pop(self.denoiser).close()
                self.engines[self.denoiser] = engine
                self.manifest, self.model_spec = derived, derived.spec
                from sdrt.runtime.lora import Adapters

                self.adapters = Adapters(derived)  # later LoRAs merge into the new graph (none are merged now)
            self.controlnets = ControlNets.pick(self.controlnets, self.manifest, self.backend, folders)

    def set_ip_adapter(self, folder: str | os.PathLike) -> None:
        """Run with this exported IP-Adapter folder from now on (scale 1.0; a server switches per batch).
        One of another layout than the loaded one needs the model loaded again (sdrt.runtime.ip_adapter)."""
        from sdrt.runtime.ip_adapter import switch

        with self._lock:
            switch(self, folder)

    def set_ip_adapter_scale(self, scale: float) -> None:
        """The IP-Adapter's weight from the next call on (diffusers' `set_ip_adapter_scale`; 1.0 when loaded,
        0 is the base alone): one number."""
        if self.ip_adapter is None:
            raise SdrtError("the pipeline has no IP-Adapter: load one with Pipeline.load(..., ip_adapter=DIR) "
                            "(--ip-adapter DIR)")
        with self._lock:
            self.ip_adapter.set_scale(scale)

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
    def tokenizer(self) -> Any:
        """The first text encoder's tokenizer (diffusers' `pipe.tokenizer`)."""
        return next(iter(self.tokenizers.values()))

    @property
    def inpainting_unet(self) -> bool:
        """A 9-channel UNet: latents + mask + masked-image latents."""
        return self.unet_in_channels != self.latent_channels

    def engine(self, component: str) -> Engine:
        if component not in self.engines:
            if self.low_memory:
                from sdrt.runtime.low_memory import make_room

                make_room(self, component)
            swapped = self.vae_manifest is not None and component in ("vae_decoder", "vae_encoder")
            self.engines[component] = self.backend.load(self.vae_manifest if swapped else self.manifest, component)
        return self.engines[component]

    def close(self) -> None:
        """Free the engines, then what the backend shares (TensorRT's stream and activation block)."""
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()
        if hasattr(self, "controlnets"):
            self.controlnets.close()
        if getattr(self, "ip_adapter", None) is not None:
            self.ip_adapter.close()
        self.backend.close()


    # -- stages every family shares ----------------------------------------------------------------
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
            label = "UNet" if self.denoiser == "unet" else self.denoiser
            raise SdrtError(f"the {label} ({self.manifest.precision(self.denoiser)}) produced NaN or inf "
                            f"latents: export the {label} in fp32, or lower guidance_scale")
        z = latents / self.scaling_factor + self.shift_factor
        decoded = tiling.decode(self.engine("vae_decoder"), z, self.vae_tiles)  # whole unless tiling applies
        if not np.isfinite(decoded).all():
            raise SdrtError(f"the VAE decoder ({self.manifest.precision('vae_decoder')}) produced NaN or inf "
                            f"pixels: export the VAE decoder in fp32 (fp16 VAEs overflow)")
        return imageio.postprocess(decoded)

    # -- what every family's call shares -----------------------------------------------------------
    def _inputs(self, image: Any, mask_image: Any) -> tuple[list, list, np.ndarray | None]:
        """(images, masks, latents given as the image: a base model's output for a refiner)."""
        if mask_image is not None and image is None:
            raise SdrtError("mask_image (--mask) needs an image (--image) to inpaint")
        if self.inpainting_unet and (image is None or mask_image is None):
            raise SdrtError(f"{self.manifest.folder} has an inpainting UNet: pass an image (--image) "
                            f"and a mask (--mask)")
        if not self.family_spec.txt2img and image is None:
            raise SdrtError(f"{self.manifest.folder} is an {self.family_spec.title}: it refines an image (--image), "
                            f"it does not draw from a prompt alone; use it after a base model (sdrt generate --refiner)")
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

    def _run(self, generate: Callable[..., "PipelineOutput"], arguments: dict[str, Any]) -> "PipelineOutput":
        """One call at a time (the engines' bound buffers are shared); an engine's out-of-memory is one line."""
        with self._lock:
            try:
                return generate(**arguments)
            except SdrtError:
                raise
            except Exception as e:  # an engine's own exception types (onnxruntime, CUDA, TensorRT)
                if not memory_guard.is_allocation_failure(e):
                    raise
                prompt = arguments["prompt"]
                n = (1 if isinstance(prompt, str) else len(prompt)) * arguments["num_images_per_prompt"]
                raise memory_guard.allocation_failure(e, self.backend_name, arguments.get("height"),
                                                      arguments.get("width"), n) from None
