"""The names a LoRA file may use for a model's layer, mapped to the diffusers module name.

A layer is found by its diffusers name (PEFT files: ``down_blocks.1.attentions.0...to_q``) or by
that name with dots as underscores (kohya's SD 1.x/2.x files). Two more spellings exist in the
files people download:

- **kohya's SDXL UNet names.** sd-scripts trains SDXL on the original (SGM/LDM) UNet, so its
  files name the layers of that module tree: ``input_blocks.4.1.transformer_blocks.0.attn1.to_q``,
  ``middle_block.2.in_layers.2``, ``output_blocks.5.2.conv``, ``time_embed.0``, ``label_emb.0.0``…
  `ldm_blocks` lays the LDM tree over the diffusers one from the UNet's config (block types,
  ``layers_per_block``): the LDM UNet numbers its input blocks across the whole encoder (a resnet,
  then its attention, per layer; a downsampler after each block but the last), the middle block
  as resnet / attention / resnet, and its output blocks across the decoder (one more layer per
  block than the encoder, the upsampler last). Inside a resnet the LDM names are its Sequential
  indices (`RESNET`); inside a transformer they are the same as diffusers'.
- **``text_model.``** in front of a CLIP text encoder's layers: transformers 5 flattened
  CLIPTextModel (no ``text_model`` level), while files written before keep the prefix (and
  CLIPTextModelWithProjection still has it). Both spellings are accepted either way.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

#: a diffusers ResnetBlock2D layer -> its name in the LDM ResBlock
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
#: diffusers UNet layers outside the blocks -> their LDM names
OUTSIDE_BLOCKS = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
                  "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
                  "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _per_block(value: Any, count: int) -> list[int]:
    return [int(value)] * count if isinstance(value, int) else [int(v) for v in value]


def ldm_blocks(config: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """diffusers block prefix -> (LDM block prefix, kind: "resnet" / "attention" / "sampler")."""
    count = len(config["block_out_channels"])
    layers = _per_block(config.get("layers_per_block", 2), count)
    down_attention = ["Attn" in kind for kind in config["down_block_types"]]
    up_attention = ["Attn" in kind for kind in config["up_block_types"]]
    blocks: dict[str, tuple[str, str]] = {}
    index = 1  # input_blocks.0 is conv_in
    for b in range(count):
        for j in range(layers[b]):
            blocks[f"down_blocks.{b}.resnets.{j}"] = (f"input_blocks.{index}.0", "resnet")
            if down_attention[b]:
                blocks[f"down_blocks.{b}.attentions.{j}"] = (f"input_blocks.{index}.1", "attention")
            index += 1
        if b < count - 1:
            blocks[f"down_blocks.{b}.downsamplers.0.conv"] = (f"input_blocks.{index}.0.op", "sampler")
            index += 1
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None:
        blocks["mid_block.resnets.0"] = ("middle_block.0", "resnet")
        blocks["mid_block.attentions.0"] = ("middle_block.1", "attention")
        blocks["mid_block.resnets.1"] = ("middle_block.2", "resnet")
    index = 0
    for b, up_layers in enumerate(reversed(layers)):
        for j in range(up_layers + 1):
            blocks[f"up_blocks.{b}.resnets.{j}"] = (f"output_blocks.{index}.0", "resnet")
            sampler = 1
            if up_attention[b]:
                blocks[f"up_blocks.{b}.attentions.{j}"] = (f"output_blocks.{index}.1", "attention")
                sampler = 2
            if b < count - 1 and j == up_layers:
                blocks[f"up_blocks.{b}.upsamplers.0.conv"] = (f"output_blocks.{index}.{sampler}.conv", "sampler")
            index += 1
    return blocks


def ldm_name(module: str, blocks: Mapping[str, tuple[str, str]]) -> str | None:
    """The LDM name of a diffusers UNet module, or None when the LDM tree has no such layer."""
    if module in OUTSIDE_BLOCKS:
        return OUTSIDE_BLOCKS[module]
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix not in blocks:
            continue
        target, kind = blocks[prefix]
        rest = parts[cut:]
        if kind == "sampler":
            return target if not rest else None
        if kind == "resnet":
            inner = RESNET.get(".".join(rest))
            return f"{target}.{inner}" if inner else None
        return ".".join([target, *rest])
    return None


def spellings(module: str, blocks: Mapping[str, tuple[str, str]] | None) -> Iterable[str]:
    """Every name a LoRA file may give the diffusers module `module` (dotted and underscored)."""
    names = [module]
    if module.startswith("text_model."):
        names.append(module[len("text_model."):])
    elif blocks is None:  # a text encoder without the text_model level
        names.append("text_model." + module)
    if blocks is not None:
        ldm = ldm_name(module, blocks)
        if ldm is not None:
            names.append(ldm)
    for name in names:
        yield name
        yield name.replace(".", "_")


def lookup(modules: Iterable[str], unet_config: Mapping[str, Any] | None) -> dict[str, str]:
    """Spelling -> diffusers module, for a component's modules (`unet_config`: the UNet's, else None)."""
    blocks = ldm_blocks(unet_config) if unet_config is not None else None
    table: dict[str, str] = {}
    for module in modules:
        for name in spellings(module, blocks):
            table.setdefault(name, module)
    for module in modules:  # a module's own name always means that module
        table[module] = module
    return table
