"""kohya's (and ComfyUI's) names for an SD3 transformer's layers: Stability's original MMDiT tree.

sd-scripts trains SD3 / SD3.5 LoRA on Stability's MMDiT module (``sd3_models.MMDiT``), so its files
(``lora_unet_...``) name the layers of that tree — ``joint_blocks.3.x_block.attn.qkv``,
``joint_blocks.3.context_block.mlp.fc1``, ``final_layer.linear`` — and ComfyUI reads the same tree
(``diffusion_model.<name>``). Beyond the names, two things differ from diffusers'
SD3Transformer2DModel, exactly as diffusers' single-file converter
(``convert_sd3_transformer_checkpoint_to_diffusers``) treats the weights:

- q, k and v are one fused Linear (``attn.qkv``, 3 × width rows): its update splits by rows into
  ``to_q`` / ``to_k`` / ``to_v`` (``add_q_proj`` ... for the context stream, ``attn2.*`` for SD3.5's
  second attention), the down matrix shared;
- the adaLN of the last block's context stream (a block with ``context_pre_only``) and of the final
  layer give (shift, scale), where diffusers' AdaLayerNormContinuous takes (scale, shift): the two
  row halves of the update swap.

So one file layer may become several `Part`s: a diffusers module and the rows of the file's update
that belong to it, in that module's row order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

Rows = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Part:
    """The rows `rows` (ranges, concatenated in order) of a file layer's update are module `module`'s."""

    module: str
    rows: Rows


#: MMDiT name inside a joint block -> diffusers name inside transformer_blocks.<i>, one-to-one layers
BLOCK_LAYERS = {
    "x_block.attn.proj": "attn.to_out.0", "x_block.attn2.proj": "attn2.to_out.0",
    "context_block.attn.proj": "attn.to_add_out",
    "x_block.mlp.fc1": "ff.net.0.proj", "x_block.mlp.fc2": "ff.net.2",
    "context_block.mlp.fc1": "ff_context.net.0.proj", "context_block.mlp.fc2": "ff_context.net.2",
    "x_block.adaLN_modulation.1": "norm1.linear",
}
#: fused q/k/v Linear inside a joint block -> its three diffusers projections
BLOCK_QKV = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}
#: MMDiT layers outside the joint blocks -> diffusers modules (True: (shift, scale) halves swapped)
OUTSIDE = {
    "x_embedder.proj": ("pos_embed.proj", False), "context_embedder": ("context_embedder", False),
    "t_embedder.mlp.0": ("time_text_embed.timestep_embedder.linear_1", False),
    "t_embedder.mlp.2": ("time_text_embed.timestep_embedder.linear_2", False),
    "y_embedder.mlp.0": ("time_text_embed.text_embedder.linear_1", False),
    "y_embedder.mlp.2": ("time_text_embed.text_embedder.linear_2", False),
    "final_layer.linear": ("proj_out", False), "final_layer.adaLN_modulation.1": ("norm_out.linear", True),
}


def _whole(rows: int, swap: bool = False) -> Rows:
    half = rows // 2
    return ((half, rows), (0, half)) if swap else ((0, rows),)


def mmdit_parts(modules: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[Part, ...]]:
    """MMDiT layer name (dotted) -> its parts, for the layers of an SD3 transformer whose diffusers
    modules (name -> weight shape) are `modules`; layers the model lacks are left out."""
    blocks = sorted({int(m.group(1)) for name in modules if (m := re.match(r"transformer_blocks\.(\d+)\.", name))})
    table: dict[str, tuple[Part, ...]] = {}
    for i in blocks:
        ours, theirs = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        for name, (q, k, v) in BLOCK_QKV.items():
            if theirs + q in modules:
                width = modules[theirs + q][0]
                table[ours + name] = tuple(Part(theirs + target, ((j * width, (j + 1) * width),))
                                           for j, target in enumerate((q, k, v)))
        for name, target in BLOCK_LAYERS.items():
            if theirs + target in modules:
                table[ours + name] = (Part(theirs + target, _whole(modules[theirs + target][0])),)
        context_norm = theirs + "norm1_context.linear"
        if context_norm in modules:  # context_pre_only (no to_add_out): AdaLayerNormContinuous, halves swapped
            pre_only = theirs + "attn.to_add_out" not in modules
            table[ours + "context_block.adaLN_modulation.1"] = (
                Part(context_norm, _whole(modules[context_norm][0], swap=pre_only)),)
    for name, (target, swap) in OUTSIDE.items():
        if target in modules:
            table[name] = (Part(target, _whole(modules[target][0], swap=swap)),)
    return table


def lookup_parts(modules: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[Part, ...]]:
    """Every spelling of an MMDiT layer name a file may use (dotted, kohya's underscores) -> its parts."""
    table = {}
    for name, parts in mmdit_parts(modules).items():
        table[name] = parts
        table[name.replace(".", "_")] = parts
    return table
