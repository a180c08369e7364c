"""ControlNet presets: ControlNets that fit a preset base, as ordinary diffusers ControlNet folders.

`sdrt preset tiny-controlnet --out DIR` writes one like every other preset (seeded random weights).
A fresh diffusers ControlNet has its "zero convolutions" at zero, so its residuals vanish and it
changes nothing; these draw *every* weight from the seeded generator, zero convolutions included,
so a ControlNet visibly steers its base (what the parity tests need to prove anything).
"""

from __future__ import annotations

import copy
import inspect
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


CONTROLNET_PRESETS: dict[str, ControlNetPreset] = {p.name: p for p in (
    ControlNetPreset("tiny-controlnet", "a ControlNet for the tiny preset (and tiny-sd21's layout, tiny-inpaint, "
                     "tiny-lcm), seeded random weights with non-zero zero convolutions", "tiny", (8, 16)),
    ControlNetPreset("tiny-sdxl-controlnet", "a ControlNet for the tiny-sdxl preset (text_time conditioning), "
                     "seeded random weights with non-zero zero convolutions", "tiny-sdxl", (8, 16)),
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

    from sdrt.export.presets import _fill_seeded, _parameters_on_meta, get_preset

    preset = get_controlnet_preset(name)
    base = get_preset(preset.base)
    with _parameters_on_meta():
        model = diffusers.ControlNetModel(**controlnet_config(base.unet, preset.conditioning_embedding_out_channels))
    _fill_seeded([model], seed + 1, base, torch.float32)
    return model.eval()


def write_controlnet(name: str, out: str | Path, *, seed: int = 0, force: bool = False) -> Path:
    """Write the preset as an ordinary diffusers ControlNet folder (config.json + safetensors), atomically."""
    from sdrt.export.staging import check_target

    get_controlnet_preset(name)
    out = Path(out)
    check_target(out, force)
    with atomic.staged_folder(out, if_exists="replace" if force else "fail") as tmp:
        build_controlnet(name, seed=seed).save_pretrained(tmp)
    return out
