"""Write a diffusers pipeline as one single-file checkpoint in the original LDM / SGM key layout (the layout
diffusers' conversion scripts read and write: A1111's, ComfyUI's and the model sites' .safetensors files).

Written for the tests from the layout's documented names, independently of sdrt's loader:

- UNet under ``model.diffusion_model.``: ``time_embed``, ``label_emb`` (SDXL), ``input_blocks.N.{0: resnet,
  1: transformer}`` with ``op`` downsamplers, ``middle_block.{0,1,2}``, ``output_blocks.N`` with the
  upsampler last, ``out``; resnets as ``in_layers``/``emb_layers``/``out_layers``/``skip_connection``;
- VAE under ``first_stage_model.``: ``down.I.block.J``, ``mid.block_1/attn_1/block_2``, ``up`` in reverse
  order, attention as 1x1 convolutions ``q k v proj_out``;
- CLIP ViT-L under ``cond_stage_model.transformer.`` (SD 1.x) or ``conditioner.embedders.0.transformer.``
  (SDXL), in transformers' own names; OpenCLIP (SD 2.x ``cond_stage_model.model.``, SDXL
  ``conditioner.embedders.1.model.``, the refiner ``conditioner.embedders.0.model.``) with fused
  ``in_proj`` q/k/v, ``ln_1``/``ln_2``, ``mlp.c_fc``/``c_proj``, ``ln_final`` and a transposed
  ``text_projection``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(state: dict[str, Any], src: str, dst: str, out: dict[str, Any], table: dict[str, str] | None = None) -> None:
    for key, value in state.items():
        if not key.startswith(src + "."):
            continue
        rest = key[len(src) + 1:]
        for a, b in (table or {}).items():
            if rest.startswith(a + "."):
                rest = b + rest[len(a):]
                break
        out[f"{dst}.{rest}"] = value


def unet_keys(unet: Any, prefix: str = "model.diffusion_model") -> dict[str, np.ndarray]:
    state = {k: v.detach().float().numpy() for k, v in unet.state_dict().items()}
    config = unet.config
    lpb, blocks = config.layers_per_block, len(config.block_out_channels)
    out: dict[str, np.ndarray] = {}
    _rename(state, "time_embedding", f"{prefix}.time_embed", out, {"linear_1": "0", "linear_2": "2"})
    _rename(state, "add_embedding", f"{prefix}.label_emb.0", out, {"linear_1": "0", "linear_2": "2"})
    _rename(state, "conv_in", f"{prefix}.input_blocks.0.0", out)
    _rename(state, "conv_norm_out", f"{prefix}.out.0", out)
    _rename(state, "conv_out", f"{prefix}.out.2", out)
    for i in range(blocks):
        for j in range(lpb):
            n = (lpb + 1) * i + j + 1
            _rename(state, f"down_blocks.{i}.resnets.{j}", f"{prefix}.input_blocks.{n}.0", out, RESNET)
            _rename(state, f"down_blocks.{i}.attentions.{j}", f"{prefix}.input_blocks.{n}.1", out)
        _rename(state, f"down_blocks.{i}.downsamplers.0.conv", f"{prefix}.input_blocks.{(lpb + 1) * (i + 1)}.0.op", out)
    _rename(state, "mid_block.resnets.0", f"{prefix}.middle_block.0", out, RESNET)
    _rename(state, "mid_block.attentions.0", f"{prefix}.middle_block.1", out)
    _rename(state, "mid_block.resnets.1", f"{prefix}.middle_block.2", out, RESNET)
    for i in range(blocks):
        attentions = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
        for j in range(lpb + 1):
            n = (lpb + 1) * i + j
            _rename(state, f"up_blocks.{i}.resnets.{j}", f"{prefix}.output_blocks.{n}.0", out, RESNET)
            _rename(state, f"up_blocks.{i}.attentions.{j}", f"{prefix}.output_blocks.{n}.1", out)
        _rename(state, f"up_blocks.{i}.upsamplers.0", f"{prefix}.output_blocks.{(lpb + 1) * i + lpb}."
                f"{2 if attentions else 1}", out)
    assert len(out) == len(state), f"{len(state) - len(out)} UNet keys have no LDM name"
    return out


def vae_keys(vae: Any, prefix: str = "first_stage_model") -> dict[str, np.ndarray]:
    state = {k: v.detach().float().numpy() for k, v in vae.state_dict().items()}
    blocks = len(vae.config.block_out_channels)
    out: dict[str, np.ndarray] = {}
    for part in ("encoder", "decoder"):
        for same in ("conv_in", "conv_out"):
            _rename(state, f"{part}.{same}", f"{prefix}.{part}.{same}", out)
        _rename(state, f"{part}.conv_norm_out", f"{prefix}.{part}.norm_out", out)
        _rename(state, f"{part}.mid_block.resnets.0", f"{prefix}.{part}.mid.block_1", out, {"conv_shortcut": "nin_shortcut"})
        _rename(state, f"{part}.mid_block.resnets.1", f"{prefix}.{part}.mid.block_2", out, {"conv_shortcut": "nin_shortcut"})
        _rename(state, f"{part}.mid_block.attentions.0", f"{prefix}.{part}.mid.attn_1", out, VAE_ATTENTION)
    for i in range(blocks):
        for j in range(vae.config.layers_per_block):
            _rename(state, f"encoder.down_blocks.{i}.resnets.{j}", f"{prefix}.encoder.down.{i}.block.{j}", out,
                    {"conv_shortcut": "nin_shortcut"})
        _rename(state, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"{prefix}.encoder.down.{i}.downsample.conv", out)
        up = blocks - 1 - i
        for j in range(vae.config.layers_per_block + 1):
            _rename(state, f"decoder.up_blocks.{i}.resnets.{j}", f"{prefix}.decoder.up.{up}.block.{j}", out,
                    {"conv_shortcut": "nin_shortcut"})
        _rename(state, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"{prefix}.decoder.up.{up}.upsample.conv", out)
    _rename(state, "quant_conv", f"{prefix}.quant_conv", out)
    _rename(state, "post_quant_conv", f"{prefix}.post_quant_conv", out)
    for key in [k for k in out if ".attn_1." in k and k.endswith(".weight") and out[k].ndim == 2]:
        out[key] = out[key][:, :, None, None]  # the LDM VAE's attention projections are 1x1 convolutions
    assert len(out) == len(state)
    return out


def clip_keys(encoder: Any, prefix: str) -> dict[str, np.ndarray]:
    """CLIP ViT-L in transformers' names, under `prefix` (e.g. "cond_stage_model.transformer")."""
    return {f"{prefix}.text_model.{k.removeprefix('text_model.')}": v.detach().float().numpy()
            for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}


def open_clip_keys(encoder: Any, prefix: str) -> dict[str, np.ndarray]:
    """An OpenCLIP text tower: fused q/k/v, its own layer names, the projection transposed."""
    s = {k.removeprefix("text_model."): v.detach().float().numpy() for k, v in encoder.state_dict().items()}
    out = {f"{prefix}.token_embedding.weight": s["embeddings.token_embedding.weight"],
           f"{prefix}.positional_embedding": s["embeddings.position_embedding.weight"],
           f"{prefix}.ln_final.weight": s["final_layer_norm.weight"], f"{prefix}.ln_final.bias": s["final_layer_norm.bias"]}
    for i in range(encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}", f"{prefix}.transformer.resblocks.{i}"
        for kind in ("weight", "bias"):
            out[f"{dst}.attn.in_proj_{kind}"] = np.concatenate([s[f"{src}.self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[f"{dst}.attn.out_proj.{kind}"] = s[f"{src}.self_attn.out_proj.{kind}"]
            out[f"{dst}.ln_1.{kind}"] = s[f"{src}.layer_norm1.{kind}"]
            out[f"{dst}.ln_2.{kind}"] = s[f"{src}.layer_norm2.{kind}"]
            out[f"{dst}.mlp.c_fc.{kind}"] = s[f"{src}.mlp.fc1.{kind}"]
            out[f"{dst}.mlp.c_proj.{kind}"] = s[f"{src}.mlp.fc2.{kind}"]
    if "text_projection.weight" in s:
        out[f"{prefix}.text_projection"] = np.ascontiguousarray(s["text_projection.weight"].T)
    return out


def write_single_file(source: Path, out: Path, *, extra: dict[str, np.ndarray] | None = None) -> Path:
    """The diffusers folder `source` (SD 1.x, 2.x, SDXL base or refiner, inpainting) as one .safetensors."""
    import diffusers
    import transformers
    from safetensors.numpy import save_file

    index = __import__("json").loads((source / "model_index.json").read_text())
    keys = unet_keys(diffusers.UNet2DConditionModel.from_pretrained(source / "unet"))
    keys.update(vae_keys(diffusers.AutoencoderKL.from_pretrained(source / "vae")))
    xl = "text_encoder_2" in index and index["text_encoder_2"][0] is not None
    if xl:
        if index.get("text_encoder") and index["text_encoder"][0] is not None:
            keys.update(clip_keys(transformers.CLIPTextModel.from_pretrained(source / "text_encoder"),
                                  "conditioner.embedders.0.transformer"))
            tower = "conditioner.embedders.1.model"
        else:
            tower = "conditioner.embedders.0.model"  # the refiner: OpenCLIP only
        keys.update(open_clip_keys(transformers.CLIPTextModelWithProjection.from_pretrained(source / "text_encoder_2"),
                                   tower))
    else:
        encoder = transformers.CLIPTextModel.from_pretrained(source / "text_encoder")
        is_open_clip = encoder.config.hidden_act == "gelu"  # SD 2.x's OpenCLIP-H (SD 1.x: CLIP ViT-L, quick_gelu)
        keys.update(open_clip_keys(encoder, "cond_stage_model.model") if is_open_clip
                    else clip_keys(encoder, "cond_stage_model.transformer"))
    keys.update(extra or {})
    save_file({k: np.ascontiguousarray(v) for k, v in keys.items()}, str(out))
    return out
