"""SDXL LoRA against diffusers: kohya files with the original (LDM) UNet names and te1/te2 parts, and PEFT files.

The kohya file's layer names are spelled out by hand below (`LDM_NAMES`, the SGM UNet of tiny-sdxl:
layers_per_block 1, blocks DownBlock2D / CrossAttn / CrossAttn, 1-1-2 transformer layers), not made
by sdrt's own name table; diffusers reads the file with its own converter, and the test first checks
that diffusers put each layer on the diffusers module written next to it. Then both pipelines run with
the same noise and must agree to PSNR >= 40 dB, while the LoRA moves the image clearly off the base.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.reference import Reference, TorchReplay, load_source_pipeline
from sdrt.runtime import Pipeline
from sdrt.runtime.images import psnr
from tests.runtime.lora.helpers import layer_shapes, write_kohya, write_peft

MIN_PSNR = 40.0
MAX_BASE_PSNR = 30.0

#: kohya SDXL UNet layer (LDM name) -> the diffusers module it is, for tiny-sdxl
LDM_NAMES = {
    "input_blocks.3.1.transformer_blocks.0.attn1.to_q": "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "input_blocks.5.1.transformer_blocks.1.attn2.to_k": "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k",
    "input_blocks.5.1.proj_in": "down_blocks.2.attentions.0.proj_in",
    "middle_block.1.transformer_blocks.1.ff.net.0.proj": "mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj",
    "middle_block.1.transformer_blocks.0.attn1.to_out.0": "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "output_blocks.1.1.transformer_blocks.0.attn2.to_v": "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_v",
    "output_blocks.3.1.proj_out": "up_blocks.1.attentions.1.proj_out",
    "input_blocks.1.0.in_layers.2": "down_blocks.0.resnets.0.conv1",
    "input_blocks.3.0.skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "input_blocks.4.0.op": "down_blocks.1.downsamplers.0.conv",
    "middle_block.2.out_layers.3": "mid_block.resnets.1.conv2",
    "output_blocks.2.0.in_layers.2": "up_blocks.1.resnets.0.conv1",
    "output_blocks.4.0.out_layers.3": "up_blocks.2.resnets.0.conv2",
    "output_blocks.5.0.emb_layers.1": "up_blocks.2.resnets.1.time_emb_proj",
    "output_blocks.1.2.conv": "up_blocks.0.upsamplers.0.conv",
    "time_embed.0": "time_embedding.linear_1",
    "label_emb.0.0": "add_embedding.linear_1",
}
#: kohya text-encoder layers, with transformers 4's text_model level as the files have it (the
#: transformers 5 CLIPTextModel has none: both spellings must work). diffusers reads kohya's
#: self_attn keys of a text encoder only if an out_proj is among them (as in real files).
#: te1's layer 1 is its last, which SDXL does not use (its output is hidden_states[-2]): sdrt skips
#: it, and diffusers' LoRA there has no effect either.
TEXT_NAMES = {
    "text_encoder": ("text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.0.self_attn.out_proj",
                     "text_model.encoder.layers.0.mlp.fc2", "text_model.encoder.layers.1.mlp.fc1"),
    "text_encoder_2": ("text_model.encoder.layers.2.self_attn.out_proj", "text_model.encoder.layers.0.mlp.fc1"),
}
CALL = dict(num_inference_steps=3, guidance_scale=5.0, height=64, width=64)


def _module(model, name):
    """`name` in a CLIP text model with or without transformers 4's text_model level."""
    for spelling in (name, name.removeprefix("text_model."), "text_model." + name):
        try:
            return model.get_submodule(spelling)
        except AttributeError:
            continue
    raise AttributeError(name)


def _ldm_shapes(source):
    shapes = {"unet": {ldm: tuple(source.unet.get_submodule(module).weight.shape) for ldm, module in LDM_NAMES.items()}}
    for component, names in TEXT_NAMES.items():
        shapes[component] = {name: tuple(_module(getattr(source, component), name).weight.shape) for name in names}
    return shapes


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_onnx):
    pipe = Pipeline.load(tiny_sdxl_onnx, "ort-cpu")
    base = pipe("a red bicycle", **CALL, generator=TorchReplay(11), output_type="np").images
    return pipe, base


def test_kohya_sdxl_ldm_names_match_diffusers(sdxl, tiny_sdxl_onnx, tmp_path):
    pipe, base = sdxl
    source = load_source_pipeline(pipe.manifest)
    path = write_kohya(tmp_path / "xl-kohya.safetensors", _ldm_shapes(source), seed=21, magnitude=1.0)
    source.load_lora_weights(str(path), adapter_name="a0")
    # diffusers' own converter put every layer where the table says
    wrapped = {c: sorted(n for n, m in getattr(source, c).named_modules() if hasattr(m, "lora_A"))
               for c in ("unet", "text_encoder", "text_encoder_2")}
    assert wrapped["unet"] == sorted(LDM_NAMES.values())
    for component, names in TEXT_NAMES.items():
        assert len(wrapped[component]) == len(names)
        assert all(hasattr(_module(getattr(source, component), n), "lora_A") for n in names)
    source.fuse_lora(lora_scale=0.8)
    theirs = Reference(source, tiny_sdxl_onnx)("a red bicycle", **CALL, seed=11).images

    pipe.set_loras([(path, 0.8)])
    ours = pipe("a red bicycle", **CALL, generator=TorchReplay(11), output_type="np").images
    assert psnr(ours, base) < MAX_BASE_PSNR, "the LoRA barely changed the image: the test is blind"
    quality = psnr(ours, theirs)
    assert quality >= MIN_PSNR, f"kohya SDXL (LDM names): PSNR {quality:.1f} dB against diffusers"
    pipe.set_loras([])
    assert np.array_equal(pipe("a red bicycle", **CALL, generator=TorchReplay(11), output_type="np").images, base)


def test_peft_sdxl_unet_and_both_text_encoders_match_diffusers(sdxl, tiny_sdxl_onnx, tmp_path):
    pipe, base = sdxl
    source = load_source_pipeline(pipe.manifest)
    shapes = layer_shapes(source, text=True, conv=True)
    assert set(shapes) == {"unet", "text_encoder", "text_encoder_2"}
    path = write_peft(tmp_path / "xl-peft.safetensors", shapes, seed=22)
    source.load_lora_weights(str(path), adapter_name="a0")
    source.set_adapters(["a0"], [0.7])
    theirs = Reference(source, tiny_sdxl_onnx)("a red bicycle", **CALL, seed=11).images

    pipe.set_loras([(path, 0.7)])
    ours = pipe("a red bicycle", **CALL, generator=TorchReplay(11), output_type="np").images
    pipe.set_loras([])
    assert psnr(ours, base) < MAX_BASE_PSNR, "the LoRA barely changed the image: the test is blind"
    quality = psnr(ours, theirs)
    assert quality >= MIN_PSNR, f"PEFT SDXL: PSNR {quality:.1f} dB against diffusers"
