"""Random LoRA files for the tests, in kohya / A1111 and diffusers / PEFT format, from a model's layer shapes.

`layer_shapes(pipe)` lists the layers a LoRA trainer targets (attention projections, feed-forward,
transformer proj_in/out, the text encoder's q/k/v/out_proj and MLP; with `conv=True` also the
resnets' 3x3 convolutions) with their weight shapes; `write_kohya` / `write_peft` draw a random
low-rank pair per layer (seeded) and save it with safetensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

UNET_LINEAR = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
               "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
UNET_CONV = ("conv1", "conv2")
TEXT = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def layer_shapes(pipe, *, unet: bool = True, text: bool = False, conv: bool = False) -> dict[str, dict]:
    """component -> {module name: weight shape} of the layers LoRA trainers target."""
    out: dict[str, dict] = {}
    if unet:
        out["unet"] = {}
        for name, module in pipe.unet.named_modules():
            linear = name.endswith(UNET_LINEAR) and hasattr(module, "weight")
            conv3 = conv and ".resnets." in name and name.endswith(UNET_CONV)
            if linear or conv3:
                out["unet"][name] = tuple(module.weight.shape)
    if text:
        for component in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipe, component, None)
            if encoder is not None:
                out[component] = {name: tuple(m.weight.shape) for name, m in encoder.named_modules()
                                  if name.endswith(TEXT)}
    return out


def _pair(rng: np.random.Generator, shape: tuple, rank: int, magnitude: float) -> tuple[np.ndarray, np.ndarray]:
    if len(shape) == 4:
        down = rng.standard_normal((rank, *shape[1:]), dtype=np.float32)
        up = rng.standard_normal((shape[0], rank, 1, 1), dtype=np.float32)
    else:
        down = rng.standard_normal((rank, shape[1]), dtype=np.float32)
        up = rng.standard_normal((shape[0], rank), dtype=np.float32)
    fan_in = int(np.prod(shape[1:]))
    return up * np.float32(magnitude / np.sqrt(rank)), down * np.float32(1 / np.sqrt(fan_in))


KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
#: SDXL files (two text encoders) name the first lora_te1_
KOHYA_PREFIX_SDXL = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def write_kohya(path: Path, shapes: dict[str, dict], *, rank: int = 4, alpha: float = 2.0, seed: int = 0,
                magnitude: float = 0.3) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    prefixes = KOHYA_PREFIX_SDXL if "text_encoder_2" in shapes else KOHYA_PREFIX
    for component, layers in shapes.items():
        for name, shape in sorted(layers.items()):
            up, down = _pair(rng, shape, rank, magnitude)
            key = prefixes[component] + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = up
            tensors[f"{key}.alpha"] = np.array(alpha, dtype=np.float32)
    save_file(tensors, str(path))
    return path


def write_peft(path: Path, shapes: dict[str, dict], *, rank: int = 4, seed: int = 0, magnitude: float = 0.3) -> Path:
    """diffusers' `save_lora_weights` layout: unet.<module>.lora_A.weight / lora_B.weight, no alpha (= rank)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for component, layers in shapes.items():
        for name, shape in sorted(layers.items()):
            up, down = _pair(rng, shape, rank, magnitude)
            tensors[f"{component}.{name}.lora_A.weight"] = down
            tensors[f"{component}.{name}.lora_B.weight"] = up
    save_file(tensors, str(path))
    return path


def write_diffusers_training(path: Path, shapes: dict[str, dict], *, rank: int = 4, seed: int = 0,
                             magnitude: float = 0.3) -> Path:
    """What diffusers' LoRA training scripts save: the PEFT state converted by diffusers'
    `convert_state_dict_to_diffusers` (``.lora.down`` on the UNet, ``.lora_linear_layer.down`` on the
    text encoders) and written by `StableDiffusionPipeline.save_lora_weights` (diffusers' own writer).
    The same draws as `write_peft(shapes)`."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    rng = np.random.default_rng(seed)
    layers = {}
    for component, named in shapes.items():
        state = {}
        for name, shape in sorted(named.items()):
            up, down = _pair(rng, shape, rank, magnitude)
            state[f"{name}.lora_A.weight"] = torch.from_numpy(down)
            state[f"{name}.lora_B.weight"] = torch.from_numpy(up)
        layers[f"{component}_lora_layers"] = convert_state_dict_to_diffusers(state)
    StableDiffusionPipeline.save_lora_weights(str(path.parent), weight_name=path.name, safe_serialization=True,
                                              **layers)
    return path


#: diffusers < 0.21 attention-processor LoRA names: module -> the processor's attribute
PROCESSOR_NAMES = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora",
                   "q_proj": "to_q_lora", "k_proj": "to_k_lora", "v_proj": "to_v_lora", "out_proj": "to_out_lora"}


def _attention_leaf(name: str) -> tuple[str, str]:
    if name.endswith(".to_out.0"):
        return name[: -len(".to_out.0")], "to_out.0"
    head, _, leaf = name.rpartition(".")
    return head, leaf


def attention_only(shapes: dict[str, dict]) -> dict[str, dict]:
    """The attention projections of `layer_shapes` (what attention-processor LoRA files hold)."""
    return {c: {n: s for n, s in named.items() if _attention_leaf(n)[1] in PROCESSOR_NAMES}
            for c, named in shapes.items()}


def write_processor_format(path: Path, shapes: dict[str, dict], *, rank: int = 4, seed: int = 0,
                           magnitude: float = 0.3) -> Path:
    """The attention-processor LoRA files of diffusers < 0.21 (``unet.<attn>.processor.to_q_lora.down.weight``,
    ``text_encoder.<layer>.self_attn.to_q_lora.down.weight``) of `shapes`' attention projections; the
    same draws as `write_peft(attention_only(shapes))`."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for component, named in attention_only(shapes).items():
        for name, shape in sorted(named.items()):
            head, leaf = _attention_leaf(name)
            up, down = _pair(rng, shape, rank, magnitude)
            middle = ".processor." if component == "unet" else "."
            key = f"{component}.{head}{middle}{PROCESSOR_NAMES[leaf]}"
            tensors[f"{key}.down.weight"] = down
            tensors[f"{key}.up.weight"] = up
    save_file(tensors, str(path))
    return path


def map_shapes(folder: Path, *, text: bool = False, conv: bool = False) -> dict[str, dict]:
    """Like `layer_shapes`, from an export's weight maps (no torch, no diffusers pipeline)."""
    from sdrt.manifest import Manifest
    from sdrt.weight_map import WeightMap

    manifest = Manifest.load(folder)
    out: dict[str, dict] = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        if not manifest.has(component) or (component != "unet" and not text):
            continue
        modules = WeightMap.load(manifest, component).modules()
        ends = UNET_LINEAR if component == "unet" else TEXT
        out[component] = {name: shape for name, shape in modules.items() if name.endswith(ends)
                          or (conv and component == "unet" and ".resnets." in name and name.endswith(UNET_CONV))}
    return out
