"""How much memory one denoiser call's attention needs where a backend computes it unfused.

ONNX Runtime's CPU Attention op (opset 23) materializes every score matrix: one float32 tensor
[B * heads, hw, hw] per attention layer, which dominates memory at large sizes (64 GiB for `tiny` at
512x512 without guidance). A backend that computes attention that way reports this estimate through
`Backend.attention_bytes`, and the runtime's memory guard refuses a call that cannot fit.
"""

from __future__ import annotations

from typing import Any, Mapping


def attention_levels(unet_config: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(downsampling factor, heads) of each UNet resolution that has attention (diffusers' config keys;
    `attention_head_dim` is the head count in SD 1.x/2.x configs, per block when a list)."""
    blocks = unet_config.get("down_block_types") or []
    heads = unet_config.get("num_attention_heads") or unet_config.get("attention_head_dim") or 8
    levels = []
    for i, block in enumerate(blocks):
        if "Attn" in block:
            levels.append((2 ** i, int(heads[i] if isinstance(heads, (list, tuple)) else heads)))
    return levels


def unfused_attention_bytes(unet_config: Mapping[str, Any], batch: int, h: int, w: int) -> int:
    """Peak bytes of one materialized float32 score tensor [B * heads, hw, hw] over the UNet's levels."""
    peak = 0
    for factor, heads in attention_levels(unet_config):
        tokens = (-(-h // factor)) * (-(-w // factor))
        peak = max(peak, batch * heads * tokens * tokens * 4)
    return peak
