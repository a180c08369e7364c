"""The ControlNet new-user run's folders: made with diffusers alone, a config no preset has, zero convolutions
that are not zero (a fresh ControlNet changes nothing, and its parity would prove nothing)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")


def test_the_folders_are_new_and_the_controlnet_steers(tmp_path):
    from safetensors.numpy import load_file

    from sdrt.bench.controlnet_new_user import IP_WEIGHTS, UNET, write_folders
    from sdrt.export.presets import PRESETS

    base, net, ip = tmp_path / "base", tmp_path / "controlnet", tmp_path / "ip-adapter"
    write_folders(base, net, ip)
    assert all(preset.unet != UNET for preset in PRESETS.values())
    config = json.loads((net / "config.json").read_text())
    assert config["block_out_channels"] == UNET["block_out_channels"]
    assert config["conditioning_embedding_out_channels"] == [8, 12, 24]
    weights = load_file(str(net / "diffusion_pytorch_model.safetensors"))
    zero_convs = [k for k in weights if k.startswith(("controlnet_down_blocks.", "controlnet_mid_block."))
                  and k.endswith(".weight")]
    # conv_in's, 2 layers + the downsampler of block 0, 2 layers of block 1, the mid block's
    assert len(zero_convs) == 1 + 3 + 2 + 1 and all(abs(weights[k]).max() > 0 for k in zero_convs)
    ip_state = load_file(str(ip / IP_WEIGHTS))
    assert sum(k.endswith("to_k_ip.weight") for k in ip_state) == 2 * 2 + 2 * 3 + 1  # down, up, mid cross-attention
    assert (ip / "image_encoder" / "config.json").is_file() and (base / "model_index.json").is_file()
