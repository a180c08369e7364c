"""Load what the exporter converts: a local diffusers folder or a preset, as one `Source`.

Every way a source can be wrong is checked here, before any export work, and reported in one
line that names the file or component: no folder, no `model_index.json`, a pipeline type sdrt
does not export yet (Flux, Qwen-Image, ...), a component of an unexpected class, missing weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.hashing import update_with_file

#: what `sdrt export` takes, in words (each family's pipeline classes are in sdrt.spec.FAMILIES)
SUPPORTED_TEXT = "SD 1.x/2.x, SDXL (base, refiner, Turbo), LCM-distilled and SD3/SD3.5 pipelines"

#: Well-known pipelines sdrt does not export, with the name users know them by.
KNOWN_UNSUPPORTED = {
    "StableDiffusion3ControlNetPipeline": "SD3 with ControlNet",
    "Flux2Pipeline": "Flux.2",
    "QwenImagePipeline": "Qwen-Image",
    "WanPipeline": "Wan (a video model)",
    "LTXPipeline": "LTX-Video (a video model)",
    "HunyuanVideoPipeline": "HunyuanVideo (a video model)",
    "CogVideoXPipeline": "CogVideoX (a video model)",
    "FluxImg2ImgPipeline": "Flux",
    "StableDiffusionXLControlNetPipeline": "SDXL with ControlNet",
    "StableDiffusionControlNetPipeline": "SD with ControlNet",
    "AuraFlowPipeline": "AuraFlow",
    "SanaPipeline": "Sana",
    "HunyuanDiTPipeline": "Hunyuan-DiT",
    "KolorsPipeline": "Kolors",
    "FluxPipeline": "Flux",
    "PixArtAlphaPipeline": "PixArt-alpha",
    "PixArtSigmaPipeline": "PixArt-sigma",
    "StableDiffusionUpscalePipeline": "the SD x4 upscaler",
    "StableDiffusionDepth2ImgPipeline": "SD 2 depth-to-image",
    "KandinskyV22Pipeline": "Kandinsky 2.2",
    "StableCascadeCombinedPipeline": "Stable Cascade",
}

#: library -> the stems of its weight files
WEIGHT_STEMS = {"transformers": ("model", "pytorch_model"), "diffusers": ("diffusion_pytorch_model",)}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
VARIANTS = (None, "fp16")


@dataclass
class Source:
    """A pipeline to export, in fp32, plus the facts the manifest records about where it came from.

    `modules` holds the family's diffusers modules by folder name (text_encoder, unet, vae, ...) and
    `tokenizers` its tokenizers by folder name. A folder's modules are loaded on first use, one at a
    time (`present` names the ones it has), so a pipeline larger than memory is exported module by
    module; export frees a module (`free`) once no later component needs it. `config` reads a
    module's config without its weights."""

    kind: str  # "preset", "folder" or "single_file"
    name: str
    path: Path | None
    class_name: str
    model_index: dict[str, Any]
    family: spec.Family
    modules: dict[str, Any]
    tokenizers: dict[str, Any]
    scheduler_config: dict[str, Any]
    content_hash: str
    config_preset: str | None = None  # a single file: the preset whose configs describe it
    vae: str | None = None  # the VAE put in place of the source's (`--vae`), by file or folder name
    present: tuple[str, ...] = ()  # a folder's modules (loaded on use); a preset's are all in `modules`

    def has(self, name: str) -> bool:
        return self.modules.get(name) is not None or name in self.present

    def module(self, name: str) -> Any:
        if self.modules.get(name) is None and name in self.present and self.path is not None:
            self.modules[name] = load_module(self.path, self.family, name)
        return self.modules.get(name)

    def free(self, name: str) -> None:
        self.modules.pop(name, None)

    def config(self, name: str) -> Any:
        """The module's config (attribute access, defaults filled) without loading its weights."""
        if self.modules.get(name) is not None or self.path is None:
            module = self.modules.get(name)
            return None if module is None else module.config
        return module_config(self.path / name, *self.family.modules[name]) if name in self.present else None

    def weight_files(self, name: str) -> list[Path]:
        """A folder module's safetensors files (empty for a preset, or .bin weights)."""
        if self.path is None or name not in self.present:
            return []
        return sorted((self.path / name).glob("*.safetensors"))

    @property
    def vocab_size(self) -> int:
        first = next(name for name in self.family.text_encoders if self.has(name))
        return int(self.config(first).vocab_size)


def resolve(model: str) -> tuple[str, str]:
    """("folder", path), ("single_file", path) or ("preset", name), a Hugging Face cache id resolved to its
    folder; a one-line error when it is none of them."""
    from sdrt.export import presets
    from sdrt.export.single_file import is_single_file

    path = Path(model).expanduser()
    if is_single_file(path):
        return "single_file", str(path)
    if path.exists():
        return "folder", str(path)
    if model in presets.preset_names():
        return "preset", model
    if hub_id(model):
        return "folder", str(cached_snapshot(model))
    if any(sep in model for sep in ("/", "\\")) or model.startswith((".", "~")):
        raise SdrtError(f"model folder {model} does not exist: give a diffusers folder or a preset "
                        f"({', '.join(presets.preset_names())})")
    raise SdrtError(f"unknown preset {model!r} and no folder of that name: choose one of "
                    f"{', '.join(presets.preset_names())} or give a diffusers folder")


def family_of(class_name: str, index: dict[str, Any]) -> spec.Family:
    """The model family of a diffusers folder (an SDXL folder without text_encoder: the refiner)."""
    if class_name in KNOWN_UNSUPPORTED:
        raise SdrtError(f"{class_name} ({KNOWN_UNSUPPORTED[class_name]}) is not supported yet: sdrt exports "
                        f"{SUPPORTED_TEXT} ({', '.join(spec.supported_classes())})")
    family = spec.family_of_pipeline(class_name, index)
    if family is None:
        raise SdrtError(f"{class_name} is not supported yet: sdrt exports {SUPPORTED_TEXT} "
                        f"({', '.join(spec.supported_classes())})")
    return family


def check_folder(path: Path) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Validate a diffusers folder without loading weights: its model index and each weight file.

    Returns the model index and, per component, the weight variant to load (None or "fp16").
    """
    if not path.is_dir():
        raise SdrtError(f"{path} is not a folder: give a diffusers pipeline folder (with model_index.json)")
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise SdrtError(f"{path} is not a diffusers pipeline folder (no model_index.json): give the folder "
                        f"written by save_pretrained or `sdrt preset`")
    try:
        index = json.loads(index_path.read_text())
    except ValueError as e:
        raise SdrtError(f"{index_path} is not valid JSON ({e}): fix or re-save the pipeline")
    class_name = str(index.get("_class_name", "?"))
    family = family_of(class_name, index)
    variants: dict[str, str | None] = {}
    for name, (library, cls) in family.modules.items():
        entry = index.get(name)
        if name in family.optional_modules and (not entry or entry[1] is None):
            continue  # SD3 without T5: the runtime feeds zeros in its place, as diffusers does
        if not entry or entry[1] is None:
            raise SdrtError(f"{index_path} has no {name}: a {class_name} needs {cls} weights in {path / name}")
        if tuple(entry) != (library, cls):
            raise SdrtError(f"{name} is a {entry[1]}, not supported yet (sdrt exports {cls})")
        if not (path / name / "config.json").is_file():
            raise SdrtError(f"{name} config missing: {path / name / 'config.json'} does not exist")
        variants[name] = _weight_variant(path / name, WEIGHT_STEMS[library])
    for encoder, (tokenizer, _) in family.text_encoders.items():
        if encoder in family.modules and encoder not in variants:
            continue  # an optional encoder the folder lacks needs no tokenizer
        if not (path / tokenizer).is_dir():
            raise SdrtError(f"{tokenizer} missing: {path / tokenizer} does not exist")
    if not (path / "scheduler" / "scheduler_config.json").is_file():
        raise SdrtError(f"scheduler config missing: {path / 'scheduler' / 'scheduler_config.json'} does not exist")
    return index, variants


def _weight_variant(folder: Path, stems: tuple[str, ...]) -> str | None:
    for variant in VARIANTS:
        for stem in stems:
            infix = f".{variant}" if variant else ""
            for suffix in WEIGHT_SUFFIXES:
                name = f"{stem}{infix}{suffix}"
                if (folder / name).is_file() or (folder / f"{name}.index.json").is_file():  # sharded
                    return variant
    raise SdrtError(f"{folder.name} weights missing: no {stems[0]}.safetensors (or .bin, or an fp16 variant) "
                    f"in {folder}")


def load_module(path: Path, family: spec.Family, name: str, dtype: Any = None) -> Any:
    """One module of a diffusers folder, in fp32 (or `dtype`: the stored one, for a streamed export)."""
    import diffusers
    import torch
    import transformers

    library, cls = family.modules[name]
    module = diffusers if library == "diffusers" else transformers
    dtype_key = "torch_dtype" if library == "diffusers" else "dtype"
    variant = _weight_variant(path / name, WEIGHT_STEMS[library])
    try:
        with quiet_libraries():
            return getattr(module, cls).from_pretrained(
                path / name, variant=variant, local_files_only=True, **{dtype_key: dtype or torch.float32}).eval()
    except Exception as e:  # corrupt or mismatched files: safetensors, torch and config errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SdrtError(f"cannot load {name} from {path / name}: {first[:200]}") from None


def module_config(folder: Path, library: str, cls: str) -> Any:
    """A module's config from its config.json, defaults filled, no weights read (attribute access)."""
    import diffusers
    import transformers

    try:
        with quiet_libraries():
            if library == "transformers":
                return getattr(transformers, cls).config_class.from_pretrained(folder, local_files_only=True)
            from sdrt.export.presets import _parameters_on_meta

            model_class = getattr(diffusers, cls)
            with _parameters_on_meta():  # the module's own defaults, without its weights
                return model_class.from_config(model_class.load_config(folder)).config
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SdrtError(f"cannot read the config of {folder.name} from {folder}: {first[:200]}") from None


def _check_weights(path: Path, name: str) -> None:
    """Each safetensors file of a module opens (its header and size agree): a truncated or corrupt file
    is found before any export work, not when its module's turn comes."""
    from safetensors import safe_open

    for file in sorted((path / name).glob("*.safetensors")):
        try:
            with safe_open(str(file), "np") as f:
                f.keys()
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SdrtError(f"cannot load {name} from {path / name}: {file.name}: {first[:160]}") from None


def load_folder(path: Path) -> Source:
    """The folder's family and tokenizers; its models are loaded in fp32 when export reaches them (no
    safety checker, no hub)."""
    import transformers

    index, variants = check_folder(path)
    family = family_of(index["_class_name"], index)
    for name in variants:
        _check_weights(path, name)
    models: dict[str, Any] = {name: None for name in family.modules}
    tokenizers: dict[str, Any] = {}
    for encoder, (name, _) in family.text_encoders.items():
        if encoder in family.modules and encoder not in variants:
            continue
        kind = family.tokenizer_kinds.get(name, "clip")
        loader = transformers.T5TokenizerFast if kind == "t5" else transformers.CLIPTokenizer
        try:
            tokenizers[name] = loader.from_pretrained(path / name, local_files_only=True)
        except (OSError, ValueError, ImportError) as e:
            raise SdrtError(f"cannot load the {name} from {path / name}: {str(e).splitlines()[0]}")
    scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    return Source("folder", path.name, path.resolve(), index["_class_name"], index, family, models, tokenizers,
                  scheduler_config, hash_folder(path), present=tuple(variants))


def load_preset(name: str) -> Source:
    """Build a preset's seeded random-weight pipeline in memory (nothing written, nothing fetched)."""
    from sdrt.export import presets

    pipe = presets.build_pipeline(name, seed=0)
    index = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(pipe.config).items()}
    index["_class_name"] = type(pipe).__name__
    family = family_of(index["_class_name"], index)
    modules = {name: getattr(pipe, name, None) for name in family.modules}
    tokenizers = {folder: getattr(pipe, folder) for encoder, (folder, _) in family.text_encoders.items()
                  if modules.get(encoder, True) is not None}
    return Source("preset", name, None, type(pipe).__name__, index, family, modules, tokenizers,
                  json.loads(pipe.scheduler.to_json_string()),
                  hash_modules(name, [m for m in modules.values() if m is not None]))


def hub_id(model: str) -> bool:
    """Whether `model` reads as a Hugging Face repository id (org/name), not a path."""
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model)) and not model.startswith((".", "~"))


def cached_snapshot(repo: str) -> Path:
    """The local snapshot of a Hugging Face repository in the cache (never fetched); one line naming where
    it looked when there is none."""
    import os

    from huggingface_hub import constants

    cache = Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    folder = cache / ("models--" + repo.replace("/", "--"))
    ref = folder / "refs" / "main"
    snapshots = folder / "snapshots"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    found = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    if found:
        return found[-1]
    raise SdrtError(f"{repo} is not in the Hugging Face cache ({folder} does not exist; sdrt never downloads): "
                    f"download it once with `huggingface-cli download {repo}`, or give a local folder or file")


def load(model: str, *, unsafe_pickle: bool = False, prediction_type: str | None = None,
         vae: str | None = None) -> Source:
    kind, value = resolve(model)
    with quiet_libraries():
        if kind == "preset":
            src = load_preset(value)
        elif kind == "single_file":
            from sdrt.export import single_file

            src = single_file.load(Path(value), unsafe_pickle=unsafe_pickle, prediction_type=prediction_type)
        else:
            src = load_folder(Path(value))
        if prediction_type is not None and kind != "single_file":
            src.scheduler_config["prediction_type"] = prediction_type
        if vae is not None:
            replace_vae(src, Path(vae))
    return src


def replace_vae(src: Source, path: Path) -> None:
    """Put another VAE in the source's place: a diffusers AutoencoderKL folder, or a single VAE file in the
    original layout (converted with the source's own VAE config); it must share the source's latent space."""
    import diffusers
    import torch

    from sdrt.export import single_file

    old = src.module("vae")
    try:
        if path.is_dir():
            new = diffusers.AutoencoderKL.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32)
        elif single_file.is_single_file(path):
            readable = single_file.read_shapes(path, unsafe_pickle=False)[1]
            with tempfile.TemporaryDirectory(prefix="sdrt-vae-") as tmp:
                old.save_config(tmp)
                new = diffusers.AutoencoderKL.from_single_file(str(readable), config=tmp, local_files_only=True,
                                                               torch_dtype=torch.float32)
        else:
            raise SdrtError(f"--vae {path} does not exist: give a VAE .safetensors file or a diffusers VAE folder")
    except SdrtError:
        raise
    except Exception as e:  # conversion or config errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SdrtError(f"cannot load the VAE {path}: {first[:200]}") from None
    for key in ("latent_channels",):
        if new.config.get(key) != old.config.get(key) or len(new.config.block_out_channels) != len(
                old.config.block_out_channels):
            raise SdrtError(f"--vae {path} works in another latent space than {src.name} ({key} "
                            f"{new.config.get(key)} vs {old.config.get(key)}, "
                            f"{len(new.config.block_out_channels)} vs {len(old.config.block_out_channels)} blocks): "
                            f"use a VAE made for this model family")
    src.modules["vae"] = new.eval()
    src.vae = path.name
    digest = hashlib.sha256(src.content_hash.encode())
    digest.update(hash_modules("vae", [new]).encode())
    src.content_hash = "sha256:" + digest.hexdigest()


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """diffusers and transformers log advice (install accelerate, torchvision) while loading;
    the export's own lines and one-line errors are what a user should see."""
    import diffusers
    import transformers

    libraries = (diffusers.utils.logging, transformers.utils.logging)
    saved = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    for lib in libraries:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, (verbosity, bars) in zip(libraries, saved):
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()


def hash_folder(path: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        update_with_file(digest, file)
    return "sha256:" + digest.hexdigest()


def hash_modules(name: str, modules: list[Any]) -> str:
    """sha256 of a preset's name, configs and every weight's bytes: the content, not the recipe."""
    import torch

    digest = hashlib.sha256(name.encode())
    for module in modules:
        config = module.config
        text = config.to_json_string() if hasattr(config, "to_json_string") else json.dumps(
            dict(config), sort_keys=True, default=str)
        digest.update(text.encode())
        for key, tensor in module.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy())
    return "sha256:" + digest.hexdigest()
