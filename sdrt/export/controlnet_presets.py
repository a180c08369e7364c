"""ControlNet presets: ControlNets that fit a preset base, as ordinary diffusers ControlNet folders.

`sdrt preset tiny-controlnet --out DIR` writes one like every other preset (seeded random weights).
A fresh diffusers ControlNet has its "zero convolutions" at zero, so its residuals vanish and it
changes nothing; these draw *every* weight from the seeded generator, zero convolutions included,
so a ControlNet visibly steers its base (what the parity tests need to prove anything).

`shapes-controlnet` is trained instead (sdrt/export/train_shapes_controlnet.py): the shape's mask
-> the `shapes` model draws the shape there. Its config and fp16 weights ship in
``sdrt/data/shapes-controlnet/``, like the `shapes` preset's.
"""

from __future__ import annotations

import copy
import importlib.resources
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt import atomic
from sdrt.errors import SdrtError


@dataclass(frozen=True)
class ControlNetPreset:
    name: str
    description: str
    base: str                                     # the preset whose UNet it mirrors
    conditioning_embedding_out_channels: tuple[int, ...]  # its length - 1 = log2 of the base VAE's f
    trained: bool = False  # config and weights shipped in sdrt/data/<name>/, not seeded


#: the weights file of a trained preset (diffusers' name for a ControlNet folder's weights)
TRAINED_WEIGHTS = "diffusion_pytorch_model.safetensors"

CONTROLNET_PRESETS: dict[str, ControlNetPreset] = {p.name: p for p in (
    ControlNetPreset("tiny-controlnet", "a ControlNet for the tiny preset (and tiny-sd21's layout, tiny-inpaint, "
                     "tiny-lcm), seeded random weights with non-zero zero convolutions", "tiny", (8, 16)),
    ControlNetPreset("tiny-sdxl-controlnet", "a ControlNet for the tiny-sdxl preset (text_time conditioning), "
                     "seeded random weights with non-zero zero convolutions", "tiny-sdxl", (8, 16)),
    ControlNetPreset("shapes-controlnet", "a ControlNet TRAINED by sdrt for the shapes preset: the control "
                     "image is the shape's mask (white on black), the shape is drawn there", "shapes",
                     (16, 32, 64), trained=True),
    ControlNetPreset("sd15-controlnet", "the SD 1.5 ControlNet architecture (361M parameters), random weights",
                     "sd15", (16, 32, 96, 256)),
)}


def get_controlnet_preset(name: str) -> ControlNetPreset:
    try:
        return CONTROLNET_PRESETS[name]
    except KeyError:
        raise SdrtError(f"unknown ControlNet preset {name!r}: choose one of {', '.join(CONTROLNET_PRESETS)}") from None


def controlnet_config(unet_config: dict[str, Any], conditioning_embedding_out_channels: tuple[int, ...],
                      latent_channels: int = 4) -> dict[str, Any]:
    """A ControlNetModel config mirroring a UNet config (what diffusers' `ControlNetModel.from_unet` keeps)."""
    import diffusers

    accepted = inspect.signature(diffusers.ControlNetModel.__init__).parameters
    config = {k: copy.deepcopy(v) for k, v in unet_config.items() if k in accepted and not k.startswith("_")}
    config["in_channels"] = latent_channels  # an inpainting base's 9 channels are its own: a ControlNet sees latents
    config["conditioning_embedding_out_channels"] = list(conditioning_embedding_out_channels)
    return config


def build_controlnet(name: str, *, seed: int = 0) -> Any:
    """The preset's ControlNetModel, every weight drawn from one seeded generator (zero convolutions too)."""
    import diffusers
    import torch

    from sdrt.export.presets import _fill_seeded, parameters_on_meta, get_preset

    preset = get_controlnet_preset(name)
    if preset.trained:
        return load_trained_controlnet(name)
    base = get_preset(preset.base)
    with parameters_on_meta():
        model = diffusers.ControlNetModel(**controlnet_config(base.unet, preset.conditioning_embedding_out_channels))
    _fill_seeded([model], seed + 1, base, torch.float32)
    return model.eval()


def trained_folder(name: str) -> Any:
    return importlib.resources.files("sdrt") / "data" / name


def load_trained_controlnet(name: str) -> Any:
    """A trained preset's ControlNetModel (fp32) from its shipped config.json and fp16 safetensors."""
    import diffusers
    import torch
    from safetensors.torch import load as load_bytes

    folder = trained_folder(name)
    config, weights = folder / "config.json", folder / TRAINED_WEIGHTS
    if not (config.is_file() and weights.is_file()):
        raise SdrtError(f"the {name} preset's weights are missing ({folder}): reinstall sdrt, or train them "
                        f"with: python -m sdrt.export.train_shapes_controlnet --out sdrt/data/{name}")
    with _meta():
        model = diffusers.ControlNetModel.from_config(json.loads(config.read_text()))
    state = {k: v.to(torch.float32) for k, v in load_bytes(weights.read_bytes()).items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise SdrtError(f"the {name} preset's {TRAINED_WEIGHTS} does not fit its config.json ({len(missing)} "
                        f"missing, {len(unexpected)} unexpected tensors): retrain it")
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def _meta() -> Any:
    from sdrt.export.presets import parameters_on_meta

    return parameters_on_meta()


def write_controlnet(name: str, out: str | Path, *, seed: int = 0, force: bool = False) -> Path:
    """Write the preset as an ordinary diffusers ControlNet folder (config.json + safetensors), atomically."""
    from sdrt.export.staging import check_target

    get_controlnet_preset(name)
    out = Path(out)
    check_target(out, force)
    with atomic.staged_folder(out, if_exists="replace" if force else "fail") as tmp:
        build_controlnet(name, seed=seed).save_pretrained(tmp)
    return out
