"""IP-Adapter presets: IP-Adapters that fit a preset base, in the file layout diffusers' `load_ip_adapter` reads.

`sdrt preset tiny-ip-adapter --out DIR` writes, like h94/IP-Adapter's ``models`` folder (``tiny-sdxl-ip-adapter``:
its ``sdxl_models`` folder, ``ip-adapter_sdxl.safetensors``)::

    DIR/ip-adapter_sd15.safetensors   image_proj.proj.*, image_proj.norm.*,
                                      ip_adapter.<1, 3, 5, ...>.to_k_ip.weight / to_v_ip.weight
    DIR/image_encoder/                a CLIPVisionModelWithProjection (config.json + model.safetensors)

with seeded random weights sized for the preset's UNet (one key/value pair per cross-attention
layer, diffusers' widths), so that ``pipe.load_ip_adapter(DIR, subfolder="",
weight_name="ip-adapter_sd15.safetensors")`` loads it and the image prompt visibly steers the picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt import atomic
from sdrt.errors import SdrtError

WEIGHT_NAME = "ip-adapter_sd15.safetensors"
#: the IP-Adapter's image-prompt tokens (diffusers' ImageProjection: 4)
TOKENS = 4


@dataclass(frozen=True)
class IPAdapterPreset:
    name: str
    description: str
    base: str
    vision: dict[str, int]  # the CLIPVisionConfig's sizes
    weight_name: str = WEIGHT_NAME  # h94/IP-Adapter's file name for the base's family


IP_ADAPTER_PRESETS: dict[str, IPAdapterPreset] = {p.name: p for p in (
    IPAdapterPreset("tiny-ip-adapter", "an IP-Adapter for the tiny preset (ip-adapter_sd15 layout, a tiny CLIP vision "
                    "encoder), seeded random weights", "tiny",
                    {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "image_size": 32, "patch_size": 8, "projection_dim": 16}),
    IPAdapterPreset("tiny-sdxl-ip-adapter", "an IP-Adapter for the tiny-sdxl preset (ip-adapter_sdxl layout, a tiny "
                    "CLIP vision encoder), seeded random weights", "tiny-sdxl",
                    {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "image_size": 32, "patch_size": 8, "projection_dim": 16}, "ip-adapter_sdxl.safetensors"),
)}


def get_ip_adapter_preset(name: str) -> IPAdapterPreset:
    try:
        return IP_ADAPTER_PRESETS[name]
    except KeyError:
        raise SdrtError(f"unknown IP-Adapter preset {name!r}: choose one of {', '.join(IP_ADAPTER_PRESETS)}") from None


def cross_attention_widths(unet_config: dict[str, Any]) -> list[int]:
    """The width of each cross-attention layer in diffusers' processor order (what to_k_ip maps to)."""
    import diffusers

    from sdrt.export.presets import parameters_on_meta
    from sdrt.spec.ip_adapter import layer_width

    config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    with parameters_on_meta():
        unet = diffusers.UNet2DConditionModel(**config)
    names = [n.rsplit(".", 1)[0] for n in unet.attn_processors if n.endswith("attn2.processor")]
    return [layer_width(n, unet.config.block_out_channels) for n in names]


def build_ip_adapter(name: str, *, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """(the CLIPVisionModelWithProjection, the IP-Adapter state dict), every weight from one seeded generator."""
    import torch
    import transformers

    from sdrt.export.presets import get_preset

    preset = get_ip_adapter_preset(name)
    base = get_preset(preset.base)
    generator = torch.Generator().manual_seed(seed + 7)

    def normal(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.empty(shape).normal_(mean, std, generator=generator)

    torch.manual_seed(seed + 3)  # transformers' own initialisation of the vision encoder
    config = transformers.CLIPVisionConfig(**preset.vision)
    encoder = transformers.CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():  # larger than transformers' init, so that the image makes a difference
        encoder.visual_projection.weight.copy_(normal(*encoder.visual_projection.weight.shape, std=0.5))
    embed, width = preset.vision["projection_dim"], int(base.unet["cross_attention_dim"])
    state: dict[str, Any] = {
        "image_proj.proj.weight": normal(TOKENS * width, embed, std=embed ** -0.5),
        "image_proj.proj.bias": normal(TOKENS * width, std=0.1),
        "image_proj.norm.weight": normal(width, std=0.1, mean=1.0),
        "image_proj.norm.bias": normal(width, std=0.1),
    }
    for k, hidden in enumerate(cross_attention_widths(base.unet)):
        for which in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * k + 1}.{which}.weight"] = normal(hidden, width, std=2.0 * width ** -0.5)
    return encoder, state


def write_ip_adapter(name: str, out: str | Path, *, seed: int = 0, force: bool = False) -> Path:
    """Write the preset in diffusers' IP-Adapter layout (see the module docstring), atomically."""
    from safetensors.torch import save_file

    from sdrt.export.staging import check_target

    get_ip_adapter_preset(name)
    out = Path(out)
    check_target(out, force)
    encoder, state = build_ip_adapter(name, seed=seed)
    with atomic.staged_folder(out, if_exists="replace" if force else "fail") as tmp:
        encoder.save_pretrained(tmp / "image_encoder")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / get_ip_adapter_preset(name).weight_name))
    return out
