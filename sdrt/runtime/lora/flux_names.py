"""Flux LoRA files in the layouts people share, turned into LoRA layers on diffusers' module names.

The files name Flux's layers three ways:

- **diffusers / PEFT** (`transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight`): ai-toolkit,
  SimpleTuner, diffusers' scripts; kohya-style underscored spellings of the same names
  (`lora_transformer_...`). These are diffusers' own modules: nothing to translate.
- **Black Forest Labs' names**, from the original Flux code: kohya sd-scripts (`lora_unet_double_blocks_0_img_attn_qkv`,
  underscored, with `.alpha`), ComfyUI / BFL files (`diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`),
  and XLabs' (`double_blocks.0.processor.qkv_lora1.down.weight`, attention only). BFL fuses layers that
  diffusers keeps apart: `img_attn.qkv` is to_q, to_k and to_v; a single block's `linear1` is to_q,
  to_k, to_v and proj_mlp. A LoRA on a fused layer is `up @ down` with `up`'s rows stacked the same way,
  so it becomes one LoRA per diffusers module: the same `down`, `up`'s rows for that module (exact, also
  for kohya's "split qkv" files, whose `up` is block-diagonal). The final layer's modulation is
  (shift, scale) in BFL's code and (scale, shift) in diffusers': its `up` rows swap halves.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from sdrt.runtime.lora.files import LoraFile, LoraLayer

_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
_TXT_QKV = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")
#: a layer inside BFL's `double_blocks.N` -> the diffusers modules inside `transformer_blocks.N` (BFL's,
#: then XLabs' attention processors: `1` the image stream, `2` the text stream)
DOUBLE = {
    "img_attn.qkv": _QKV, "img_attn.proj": ("attn.to_out.0",), "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",), "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": _TXT_QKV, "txt_attn.proj": ("attn.to_add_out",), "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",), "txt_mod.lin": ("norm1_context.linear",),
    "processor.qkv_lora1": _QKV, "processor.proj_lora1": ("attn.to_out.0",),
    "processor.qkv_lora2": _TXT_QKV, "processor.proj_lora2": ("attn.to_add_out",),
}
#: a layer inside BFL's `single_blocks.N` -> the diffusers modules inside `single_transformer_blocks.N`
SINGLE = {
    "linear1": (*_QKV, "proj_mlp"), "linear2": ("proj_out",), "modulation.lin": ("norm.linear",),
    "processor.qkv_lora": _QKV, "processor.proj_lora": ("proj_out",),
}
#: BFL's layers outside the blocks -> diffusers' modules
OUTSIDE = {
    "img_in": "x_embedder", "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out", "final_layer.adaLN_modulation.1": "norm_out.linear",
}
#: BFL layers whose output halves diffusers keeps in the other order
SWAPPED = ("final_layer.adaLN_modulation.1",)
_BLOCK = re.compile(r"(double_blocks|single_blocks)[._](\d+)[._](.+)$")
#: the file's key of `down`, with its LoRA suffix: what is left is the layer as the file spells it
_DOWN_SUFFIX = re.compile(r"\.(lora_down|lora_A|down)\.weight$")
_PREFIX = re.compile(r"^(lora_unet_|diffusion_model\.|transformer\.|lora_transformer_)")


def _underscored(table: dict) -> dict:
    return {key.replace(".", "_"): key for key in table}


_DOUBLE_NAMES, _SINGLE_NAMES, _OUTSIDE_NAMES = _underscored(DOUBLE), _underscored(SINGLE), _underscored(OUTSIDE)


def bfl_modules(key: str) -> tuple[tuple[str, ...], bool] | None:
    """The diffusers modules (and whether the halves swap) a file key in BFL's naming targets; None for a
    key that is not in BFL's naming (a diffusers name, or a layer of another model)."""
    layer = _PREFIX.sub("", _DOWN_SUFFIX.sub("", key))
    block = _BLOCK.match(layer)
    if block:
        kind, index, rest = block.groups()
        table, names = (DOUBLE, _DOUBLE_NAMES) if kind == "double_blocks" else (SINGLE, _SINGLE_NAMES)
        name = names.get(rest.replace(".", "_"))
        if name is None:
            return None
        parent = "transformer_blocks" if kind == "double_blocks" else "single_transformer_blocks"
        return tuple(f"{parent}.{index}.{module}" for module in table[name]), False
    name = _OUTSIDE_NAMES.get(layer.replace(".", "_"))
    return ((OUTSIDE[name],), name in SWAPPED) if name else None


def _split(layer: LoraLayer, modules: tuple[str, ...], swap: bool) -> list[LoraLayer]:
    """One LoRA layer per diffusers module: the same down, `up`'s rows for each (split evenly, except a
    single block's linear1: q, k and v of the inner width, then the MLP's 4x)."""
    up = layer.up
    if swap:
        half = up.shape[0] // 2
        up = np.concatenate([up[half:], up[:half]])
    if len(modules) == 1:
        return [replace(layer, layer=modules[0], up=up)]
    rows = up.shape[0]
    if modules[-1].endswith("proj_mlp"):  # linear1: 3 x inner + 4 x inner
        inner = rows // 7
        sizes = [inner, inner, inner, rows - 3 * inner]
    else:
        sizes = [rows // len(modules)] * len(modules)
    starts = np.cumsum([0, *sizes])
    return [replace(layer, layer=module, up=np.ascontiguousarray(up[a:b]))
            for module, a, b in zip(modules, starts[:-1], starts[1:])]


def translate(lora: LoraFile) -> LoraFile:
    """The file's transformer layers on diffusers' modules (BFL's names translated, fused layers split);
    layers already named as diffusers names them, and the text encoders', pass through."""
    layers: list[LoraLayer] = []
    for layer in lora.layers:
        found = bfl_modules(layer.key) if layer.component == "transformer" else None
        layers.extend(_split(layer, *found) if found else [layer])
    return replace(lora, layers=tuple(layers))
