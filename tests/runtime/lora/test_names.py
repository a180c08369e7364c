"""kohya's SDXL (LDM) UNet names -> diffusers modules: against diffusers' own converter, on the real SDXL UNet.

The UNet of stabilityai/stable-diffusion-xl-base-1.0 (its config, sdrt's `sdxl` preset) is built on
torch's meta device (no weights, no memory). Every LoRA-targetable module gets a kohya key from a
name written here by hand for a few well-known layers, and for all of them from sdrt's table; diffusers'
`_maybe_map_sgm_blocks_to_diffusers` + `_convert_non_diffusers_lora_to_diffusers` must send each key
back to the module it was made from.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from sdrt.export.presets_sdxl import SDXL_UNET
from sdrt.runtime.lora.names import ldm_blocks, ldm_name, lookup

#: well-known kohya SDXL keys (as in files on the hubs) -> the diffusers module
KNOWN = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2": "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2",
    "lora_unet_middle_block_1_transformer_blocks_5_attn2_to_k": "mid_block.attentions.0.transformer_blocks.5.attn2.to_k",
    "lora_unet_middle_block_0_in_layers_2": "mid_block.resnets.0.conv1",
    "lora_unet_output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "lora_unet_output_blocks_5_1_proj_out": "up_blocks.1.attentions.2.proj_out",
    "lora_unet_output_blocks_8_0_skip_connection": "up_blocks.2.resnets.2.conv_shortcut",
    "lora_unet_input_blocks_7_0_emb_layers_1": "down_blocks.2.resnets.0.time_emb_proj",
    "lora_unet_input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "lora_unet_output_blocks_0_0_out_layers_3": "up_blocks.0.resnets.0.conv2",
    "lora_unet_time_embed_2": "time_embedding.linear_2",
    "lora_unet_label_emb_0_2": "add_embedding.linear_2",
}


@pytest.fixture(scope="module")
def sdxl_modules():
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    targets = {name: tuple(m.weight.shape) for name, m in unet.named_modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    return targets, dict(unet.config)


def _diffusers_reads(keys, config):
    from diffusers.loaders.lora_conversion_utils import (_convert_non_diffusers_lora_to_diffusers,
                                                         _maybe_map_sgm_blocks_to_diffusers)

    state = {}
    for key in keys:
        state[f"{key}.lora_down.weight"] = np.zeros(1)
        state[f"{key}.lora_up.weight"] = np.zeros(1)
    state = _maybe_map_sgm_blocks_to_diffusers(state, SimpleNamespace(**config))
    converted, _ = _convert_non_diffusers_lora_to_diffusers(state)
    modules = []
    for key in converted:
        if ".down." in key or "lora_A" in key:
            module = re.sub(r"[._]lora(_linear_layer)?\.down\.weight$", "", key.removeprefix("unet."))
            module = module.replace(".processor", "")
            modules.append(module + ".0" if module.endswith("to_out") else module)
    return modules


def test_well_known_sdxl_keys(sdxl_modules):
    targets, config = sdxl_modules
    table = lookup(targets, config)
    assert sorted(_diffusers_reads(KNOWN, config)) == sorted(KNOWN.values())  # the names above are right
    for key, module in KNOWN.items():
        assert table[key.removeprefix("lora_unet_")] == module


def test_every_sdxl_layer_round_trips_through_diffusers(sdxl_modules):
    targets, config = sdxl_modules
    blocks = ldm_blocks(config)
    keys = {"lora_unet_" + ldm_name(module, blocks).replace(".", "_"): module for module in targets}
    assert len(keys) == len(targets) > 700
    read = _diffusers_reads(keys, config)
    assert sorted(read) == sorted(targets)
    table = lookup(targets, config)
    assert all(table[key.removeprefix("lora_unet_")] == module for key, module in keys.items())
