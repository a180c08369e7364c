"""IP-Adapter (an image as a prompt): its graphs' tensors and what a UNet that takes it adds.

An IP-Adapter (diffusers' ``load_ip_adapter`` layout: ``image_proj.*`` and ``ip_adapter.<id>.to_k_ip /
to_v_ip`` weights, plus a CLIP vision encoder folder) is exported as two graphs:

    image_encoder   pixel_values [B, 3, R, R] (CLIP-normalised)  -> image_embeds [B, E]
    image_proj      image_embeds [B, E] -> ip_key_<k>, ip_value_<k> [B, N, width_k], one pair per
                    cross-attention layer k of the UNet (diffusers' ``to_k_ip`` / ``to_v_ip`` of the
                    N image-prompt tokens)

The UNet that takes them (made at load from the exported one, `sdrt.ip_graph`) has the same
``ip_key_<k>`` / ``ip_value_<k>`` inputs and adds, in each cross-attention layer, the attention of its
query over them to the text attention's output (diffusers' ``IPAdapterAttnProcessor2_0``). The
IP-Adapter scale multiplies the values (``scale * softmax(q k^T) v = softmax(q k^T) (scale v)``), so it
changes per call without any scale input.

Layer k is the k-th cross-attention (``attn2``) module in diffusers' ``attn_processors`` order (down
blocks, up blocks, then the mid block), the order the file's ids 1, 3, 5, ... follow; its width is
diffusers' ``hidden_size`` for that block. Pure Python, like the rest of the spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from sdrt.errors import SdrtError
from sdrt.spec.tensors import FLOAT, ComponentSpec, TensorSpec

PIXEL_VALUES = "pixel_values"
IMAGE_EMBEDS = "image_embeds"
#: rows per image: the projection runs on the unconditional (zero embeds) and conditional halves
IMAGE_ENCODER_BATCH = ((1, 1), (1, 1))
IMAGE_PROJ_BATCH = ((2, 2), (1, 1))
_BLOCK_ORDER = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}


def ip_key(index: int) -> str:
    return f"ip_key_{index}"


def ip_value(index: int) -> str:
    return f"ip_value_{index}"


@dataclass(frozen=True)
class IPAdapterLayout:
    """What an IP-Adapter gives a UNet: `tokens` image-prompt tokens, one key/value width per cross-attention
    layer (in diffusers' processor order); `embed_dim` E and `image_size` R of its image encoder."""

    tokens: int
    widths: tuple[int, ...]
    embed_dim: int
    image_size: int
    cross_attention_dim: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for k in range(len(self.widths)) for name in (ip_key(k), ip_value(k)))

    def unet_tensors(self) -> tuple[TensorSpec, ...]:
        """The UNet's extra inputs (and image_proj's outputs)."""
        return tuple(TensorSpec(name(k), FLOAT, ("B", self.tokens, width))
                     for k, width in enumerate(self.widths) for name in (ip_key, ip_value))

    def components(self) -> tuple[ComponentSpec, ...]:
        encoder = ComponentSpec(
            "image_encoder", inputs=(TensorSpec(PIXEL_VALUES, FLOAT, ("B", 3, self.image_size, self.image_size),
                                                draw="image"),),
            outputs=(TensorSpec(IMAGE_EMBEDS, FLOAT, ("B", self.embed_dim)),), source="image_encoder",
            graph="clip_vision", batch=IMAGE_ENCODER_BATCH)
        proj = ComponentSpec(
            "image_proj", inputs=(TensorSpec(IMAGE_EMBEDS, FLOAT, ("B", self.embed_dim)),),
            outputs=self.unet_tensors(), source="image_proj", graph="ip_projection", batch=IMAGE_PROJ_BATCH)
        return encoder, proj

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "widths": list(self.widths), "embed_dim": self.embed_dim,
                "image_size": self.image_size, "cross_attention_dim": self.cross_attention_dim}

    @classmethod
    def from_json(cls, data: Any, where: str = "pipeline.ip_adapter") -> "IPAdapterLayout":
        try:
            layout = cls(int(data["tokens"]), tuple(int(w) for w in data["widths"]), int(data["embed_dim"]),
                         int(data["image_size"]), int(data["cross_attention_dim"]))
        except (TypeError, KeyError, ValueError):
            raise SdrtError(f"{where} is not an IP-Adapter layout: export the IP-Adapter again with --force") from None
        if layout.tokens < 1 or not layout.widths or min(layout.widths) < 1:
            raise SdrtError(f"{where} is not an IP-Adapter layout: export the IP-Adapter again with --force")
        return layout


def processor_order(module: str) -> tuple[Any, ...]:
    """Sort key of a UNet attention module's name in diffusers' ``attn_processors`` order (the
    UNet registers down_blocks, up_blocks, then mid_block; inside, by index)."""
    head = module.split(".", 1)[0]
    if head not in _BLOCK_ORDER:
        raise SdrtError(f"the UNet attention module {module!r} is not in a down, mid or up block: sdrt's IP-Adapter "
                        f"support needs a UNet2DConditionModel")
    return (_BLOCK_ORDER[head], *(int(p) if p.isdigit() else p for p in re.split(r"[.]", module)[1:]))


def layer_width(module: str, block_out_channels: Sequence[int]) -> int:
    """diffusers' IP-Adapter ``hidden_size`` of the cross-attention module `module`."""
    if module.startswith("mid_block"):
        return int(block_out_channels[-1])
    index = int(module.split(".")[1])
    if module.startswith("up_blocks"):
        return int(list(reversed(block_out_channels))[index])
    return int(block_out_channels[index])
