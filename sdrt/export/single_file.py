"""Single-file checkpoints (A1111's, ComfyUI's, the model sites' .safetensors) -> a `Source`, nothing fetched.

The architecture is read from the file's keys (the original LDM / SGM layout): SD 1.x (CLIP ViT-L under
``cond_stage_model.transformer``), SD 2.x (OpenCLIP under ``cond_stage_model.model``), SDXL base (two
``conditioner.embedders``) or refiner (OpenCLIP alone), and inpainting (a 9-channel first UNet conv).
Its sizes (UNet width, cross-attention width, text encoders' width and depth, VAE width) pick the
sdrt preset whose configs describe it (`sdrt.export.presets`: the released architectures and the
tiny ones); diffusers' `from_single_file` then converts the weights with those configs, written to a
temporary folder (`local_files_only`, so no hub is ever asked). A file no preset describes is one line
saying what was found.

Prediction type: `--prediction-type`, else a ``v_pred`` key in the file (the community's marker), else
for SD 2.x the web UI's test (the UNet at t = 999 on a constant input: a v-prediction model's output
sits far below it), else epsilon. A ``.ckpt`` is a pickle that can run code when read: refused unless
`unsafe_pickle` (then read with torch.load and converted in memory).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.errors import SdrtError

SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
UNET = "model.diffusion_model."
#: architecture -> (the key that marks it, the presets that may describe it, the diffusers classes)
ARCHITECTURES: dict[str, tuple[str, tuple[str, ...], tuple[str, str]]] = {
    "sdxl": ("conditioner.embedders.1.model.positional_embedding", ("sdxl", "tiny-sdxl"),
             ("StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline")),
    "sdxl-refiner": ("conditioner.embedders.0.model.positional_embedding", ("sdxl-refiner", "tiny-sdxl-refiner"),
                     ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")),
    "sd2": ("cond_stage_model.model.positional_embedding", ("sd21", "tiny-sd21"),
            ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline")),
    "sd1": ("cond_stage_model.transformer.text_model.embeddings.position_embedding.weight", ("sd15", "tiny"),
            ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline")),
}
ARCHITECTURE_TITLES = {"sdxl": "SDXL base", "sdxl-refiner": "SDXL refiner", "sd2": "SD 2.x", "sd1": "SD 1.x"}


def is_single_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


@dataclass(frozen=True)
class Signature:
    """The sizes that tell architectures of one family apart (what a preset must match)."""

    unet_width: int
    unet_in: int
    context: int
    text: tuple[tuple[int, int], ...]  # per text encoder: (width, layers present in the file)
    vae_width: int

    def describe(self) -> str:
        texts = ", ".join(f"{w} wide x {n} layers" for w, n in self.text)
        return (f"UNet {self.unet_width} channels ({self.unet_in} in), cross-attention {self.context}, text encoder(s) "
                f"{texts}, VAE {self.vae_width} channels")


def read_shapes(path: Path, unsafe_pickle: bool) -> tuple[dict[str, tuple[int, ...]], Path]:
    """Key -> shape of a single file (a .ckpt converted to a temporary .safetensors first, when allowed)."""
    if path.suffix.lower() != ".safetensors":
        if not unsafe_pickle:
            raise SdrtError(f"{path} is a pickle ({path.suffix}): reading one can run any code it holds; convert it "
                            f"to .safetensors, or pass --unsafe-pickle if you trust where it came from")
        path = _pickle_to_safetensors(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, path
    except Exception as e:  # safetensors' own error types
        raise SdrtError(f"{path} is not a readable .safetensors file ({e})") from None


def _pickle_to_safetensors(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    data = torch.load(str(path), map_location="cpu", weights_only=False)  # the user asked: --unsafe-pickle
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise SdrtError(f"{path} holds no state dict (a {type(data).__name__}): not a checkpoint")
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    out = Path(tempfile.mkdtemp(prefix="sdrt-ckpt-")) / (path.stem + ".safetensors")
    save_file(tensors, str(out))
    return out


def detect(shapes: dict[str, tuple[int, ...]], where: str) -> tuple[str, bool]:
    """(architecture, inpainting) from the keys; one line naming what was found when none fits."""
    for name, (marker, _, _) in ARCHITECTURES.items():
        if marker in shapes:
            conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
            if conv_in is None:
                raise SdrtError(f"{where} has a {ARCHITECTURE_TITLES[name]} text encoder but no UNet "
                                f"({UNET}*): a full checkpoint is needed")
            return name, conv_in[1] == 9
    prefixes = sorted({".".join(k.split(".")[:2]) for k in shapes})[:8]
    raise SdrtError(f"{where}: its keys match no architecture sdrt reads (found {', '.join(prefixes) or 'no keys'}"
                    f"{', ...' if len(prefixes) == 8 else ''}; sdrt reads SD 1.x, 2.x, SDXL base and refiner "
                    f"checkpoints in the original layout, or a diffusers folder)")


def _layers(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    found = {int(m.group(1)) for k in shapes for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    return max(found) + 1 if found else 0


def signature(shapes: dict[str, tuple[int, ...]], architecture: str) -> Signature:
    conv_in = shapes[UNET + "input_blocks.0.0.weight"]
    context = next((s[1] for k, s in sorted(shapes.items()) if k.startswith(UNET) and k.endswith("attn2.to_k.weight")), 0)
    texts = []
    for prefix in {"sd1": ["cond_stage_model.transformer.text_model."], "sd2": ["cond_stage_model.model."],
                   "sdxl": ["conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."],
                   "sdxl-refiner": ["conditioner.embedders.0.model."]}[architecture]:
        table = shapes.get(prefix + "embeddings.token_embedding.weight") or shapes.get(prefix + "token_embedding.weight")
        layers = _layers(shapes, prefix + "encoder.layers.") or _layers(shapes, prefix + "transformer.resblocks.")
        texts.append((table[1] if table else 0, layers))
    vae = shapes.get("first_stage_model.encoder.conv_in.weight", (0,))
    return Signature(conv_in[0], conv_in[1], context, tuple(texts), vae[0])


def preset_signature(name: str, inpainting: bool) -> Signature:
    from sdrt.export.presets import get_preset

    p = get_preset(name)
    encoders = [e for e in (p.text_encoder, p.text_encoder_2) if e is not None]
    return Signature(p.unet["block_out_channels"][0], 9 if inpainting else p.unet.get("in_channels", 4),
                     p.unet["cross_attention_dim"], tuple((e["hidden_size"], e["num_hidden_layers"]) for e in encoders),
                     p.vae["block_out_channels"][0])


def pick_preset(found: Signature, architecture: str, inpainting: bool, where: str) -> str:
    """The preset whose architecture the file holds (an OpenCLIP file may hold more layers than SD 2.x uses)."""
    for name in ARCHITECTURES[architecture][1]:
        want = preset_signature(name, inpainting)
        texts_fit = len(want.text) == len(found.text) and all(
            fw == ww and fn >= wn for (fw, fn), (ww, wn) in zip(found.text, want.text))
        if texts_fit and (want.unet_width, want.unet_in, want.context, want.vae_width) == (
                found.unet_width, found.unet_in, found.context, found.vae_width):
            return name
    raise SdrtError(f"{where} is an {ARCHITECTURE_TITLES[architecture]} checkpoint of an architecture sdrt has no "
                    f"config for (found: {found.describe()}; sdrt knows the presets "
                    f"{', '.join(ARCHITECTURES[architecture][1])}): convert it to a diffusers folder and export that")


def write_configs(preset: str, pipeline_class: str, inpainting: bool, out: Path) -> None:
    """The preset's configs as a diffusers folder without weights (what from_single_file's `config` reads)."""
    import diffusers

    from sdrt.export.presets import build_components, get_preset
    from sdrt.export.tokenizer_files import write_tokenizer

    p = get_preset(preset)
    parts = build_components(preset, device="meta")
    index: dict[str, Any] = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__,
                             **p.pipeline_options}
    for name, part in parts.items():
        library = "transformers" if name.startswith(("text_encoder", "tokenizer")) else "diffusers"
        index[name] = [library, type(part).__name__]
        folder = out / name
        folder.mkdir(parents=True)
        if name.startswith("tokenizer"):
            write_tokenizer(part, folder)
        elif library == "transformers":
            part.config.save_pretrained(folder)
        else:
            part.save_config(folder)
    if inpainting:
        config = json.loads((out / "unet" / "config.json").read_text())
        (out / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 9}))
    if "StableDiffusionPipeline" in pipeline_class or "StableDiffusionInpaint" in pipeline_class:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def v_prediction_test(unet: Any) -> bool:
    """The web UI's SD 2.x test: at t = 999 on a constant input, a v-prediction UNet's output lies far below it."""
    import torch

    x = torch.ones((1, unet.config.in_channels, 8, 8)) * 0.5
    context = torch.ones((1, 77, unet.config.cross_attention_dim)) * 0.5
    with torch.no_grad():
        out = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
    return float((out - x[:, : out.shape[1]]).mean()) < -1.0


def open_clip_encoder(config: Path, checkpoint: Path, prefix: str) -> Any:
    """SDXL's OpenCLIP text encoder, converted by diffusers' own function with the config's sizes. diffusers
    tells SDXL's two encoders apart by their widths alone; given explicitly, equal widths convert too."""
    import transformers
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors.torch import load_file

    model = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig.from_pretrained(config))
    tensors = {k: v for k, v in load_file(str(checkpoint)).items() if k.startswith(prefix)}
    state = convert_open_clip_checkpoint(model, tensors, prefix=prefix)
    wanted = {k for k in model.state_dict() if not k.endswith("position_ids")}
    missing = sorted(wanted - set(state))
    if missing:
        raise SdrtError(f"{checkpoint} lacks OpenCLIP weights under {prefix} ({missing[0]}, ...): not a complete "
                        f"SDXL checkpoint")
    model.load_state_dict(state, strict=False)
    return model.eval()


def load(path: Path, *, unsafe_pickle: bool = False, prediction_type: str | None = None) -> Any:
    """A single-file checkpoint as the exporter's `Source` (fp32 modules, the preset's tokenizers); its
    `config` names the preset whose configs describe it."""
    import diffusers
    import torch

    from sdrt.export.source import Source, family_of

    shapes, readable = read_shapes(path, unsafe_pickle)
    architecture, inpainting = detect(shapes, str(path))
    preset = pick_preset(signature(shapes, architecture), architecture, inpainting, str(path))
    class_name = ARCHITECTURES[architecture][2][1 if inpainting else 0]
    with tempfile.TemporaryDirectory(prefix="sdrt-single-file-") as tmp:
        config = Path(tmp)
        write_configs(preset, class_name, inpainting, config)
        given = {}
        if architecture == "sdxl":
            given["text_encoder_2"] = open_clip_encoder(config / "text_encoder_2", readable,
                                                        "conditioner.embedders.1.model.")
        try:
            pipe = getattr(diffusers, class_name).from_single_file(
                str(readable), config=str(config), local_files_only=True, torch_dtype=torch.float32, **given)
        except Exception as e:  # conversion errors: missing or misshapen keys
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SdrtError(f"cannot convert {path} with the {preset} configs: {first[:200]}") from None
    index = json.loads(json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(pipe.config).items()}))
    index["_class_name"] = class_name
    family = family_of(class_name, index)
    modules = {name: getattr(pipe, name).eval() for name in family.modules}
    tokenizers = {folder: getattr(pipe, folder) for folder, _ in family.text_encoders.values()}
    scheduler = json.loads(pipe.scheduler.to_json_string())
    prediction = prediction_type or ("v_prediction" if "v_pred" in shapes else None)
    if prediction is None and architecture == "sd2":
        prediction = "v_prediction" if v_prediction_test(modules["unet"]) else "epsilon"
    scheduler["prediction_type"] = prediction or "epsilon"
    return Source("single_file", path.name, path.resolve(), class_name, index, family, modules, tokenizers,
                  scheduler, hash_file(path), config_preset=preset)


def hash_file(path: Path) -> str:
    import hashlib

    from sdrt.hashing import update_with_file

    digest = hashlib.sha256(path.name.encode() + b"\0")
    update_with_file(digest, path)
    return "sha256:" + digest.hexdigest()
