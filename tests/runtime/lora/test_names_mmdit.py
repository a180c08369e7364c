"""SD3's original MMDiT names (kohya's lora_unet_, ComfyUI's diffusion_model.) -> diffusers modules and rows,
against diffusers' own single-file converter.

A tiny SD3.5 transformer (qk RMS-norm, a dual-attention layer, a context_pre_only last block) gets a
Stability-format checkpoint written through sdrt's table *backwards* (each original layer's rows gathered
from the diffusers modules the table names); diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`
must turn it back into the same state dict. A wrong split, order or (shift, scale) swap in the table
breaks the round trip.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.export.presets_sd3 import TINY_SD3_TRANSFORMER
from sdrt.runtime.lora.names_mmdit import lookup_parts, mmdit_parts

#: well-known keys of kohya SD3.5 LoRA files -> (diffusers module, rows of the update it takes)
KNOWN = {
    "joint_blocks_0_x_block_attn_qkv": "transformer_blocks.0.attn.to_k",
    "joint_blocks_1_context_block_attn_qkv": "transformer_blocks.1.attn.add_v_proj",
    "joint_blocks_0_x_block_attn2_proj": "transformer_blocks.0.attn2.to_out.0",
    "joint_blocks_0_context_block_mlp_fc2": "transformer_blocks.0.ff_context.net.2",
    "final_layer_adaLN_modulation_1": "norm_out.linear",
    "t_embedder_mlp_2": "time_text_embed.timestep_embedder.linear_2",
}


@pytest.fixture(scope="module")
def transformer():
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(**TINY_SD3_TRANSFORMER)
    with torch.no_grad():
        for p in model.parameters():  # distinct values everywhere (default inits leave zeros and ones)
            p.copy_(torch.randn_like(p))
    return model


def _modules(model) -> dict[str, tuple[int, ...]]:
    import torch

    return {name: tuple(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def _original_checkpoint(model) -> dict:
    """The Stability-format state dict of `model`, written through sdrt's table backwards."""
    import torch

    state = model.state_dict()
    out = {}
    for name, parts in mmdit_parts(_modules(model)).items():
        for kind in ("weight", "bias"):
            rows = sum(b - a for part in parts for a, b in part.rows)
            first = state[f"{parts[0].module}.{kind}"]
            fused = torch.empty((rows, *first.shape[1:]), dtype=first.dtype)
            for part in parts:
                index = torch.from_numpy(np.concatenate([np.arange(a, b) for a, b in part.rows]))
                fused[index] = state[f"{part.module}.{kind}"]
            out[f"{name}.{kind}"] = fused
    out["pos_embed"] = state["pos_embed.pos_embed"]
    for key, value in state.items():  # the qk RMS-norms: not LoRA layers, only renamed
        for theirs, ours in (("attn.norm_q", "x_block.attn.ln_q"), ("attn.norm_k", "x_block.attn.ln_k"),
                             ("attn.norm_added_q", "context_block.attn.ln_q"),
                             ("attn.norm_added_k", "context_block.attn.ln_k"),
                             ("attn2.norm_q", "x_block.attn2.ln_q"), ("attn2.norm_k", "x_block.attn2.ln_k")):
            if key.startswith("transformer_blocks.") and f".{theirs}." in key:
                block = key.split(".")[1]
                out[f"joint_blocks.{block}.{ours}.weight"] = value
    return out


def test_round_trip_through_diffusers_converter(transformer):
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    modules = _modules(transformer)
    covered = {part.module for parts in mmdit_parts(modules).values() for part in parts}
    assert covered == set(modules)  # every Linear / Conv of the transformer has an original name
    converted = convert_sd3_transformer_checkpoint_to_diffusers(_original_checkpoint(transformer))
    state = transformer.state_dict()
    assert set(converted) == set(state)
    for key, value in state.items():
        assert np.array_equal(converted[key].numpy(), value.numpy()), key


def test_well_known_kohya_names(transformer):
    table = lookup_parts(_modules(transformer))
    for key, module in KNOWN.items():
        assert module in [part.module for part in table[key]], key
    qkv = table["joint_blocks_0_x_block_attn_qkv"]
    width = TINY_SD3_TRANSFORMER["num_attention_heads"] * TINY_SD3_TRANSFORMER["attention_head_dim"]
    assert [p.rows for p in qkv] == [((0, width),), ((width, 2 * width),), ((2 * width, 3 * width),)]
    # the last block is context_pre_only: its context adaLN is (shift, scale) in the file, swapped here
    last = table["joint_blocks_1_context_block_adaLN_modulation_1"][0]
    assert last.rows == ((width, 2 * width), (0, width))
    assert table["joint_blocks_0_context_block_adaLN_modulation_1"][0].rows == ((0, 6 * width),)
    assert table["joint_blocks.0.x_block.attn.proj"] == table["joint_blocks_0_x_block_attn_proj"]
