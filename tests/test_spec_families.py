"""Model families in the spec: SDXL base / refiner and LCM tensors, and what engines derive from them."""

import numpy as np
import pytest

from sdrt import spec
from sdrt.engines import trt_buffers, trt_profiles as tp
from sdrt.errors import SdrtError
from sdrt.manifest import SizeRule

#: SDXL 1.0's symbols: CLIP-L (768) + bigG (1280) side by side, bigG's 1280 pooled, 6 time ids
SDXL = spec.model_values(latent_channels=4, unet_in_channels=4, text_hidden_size=2048, vae_scale_factor=8,
                         extra={"D1": 768, "D2": 1280, "K1": 12, "K2": 32, "P": 1280, "T": 6})
RULE = SizeRule(latent_multiple=8, min_latent=64, max_latent=256, vae_scale_factor=8)


def test_no_family_is_a_default_and_sd_is_unchanged():
    with pytest.raises(TypeError):
        spec.model_spec()  # a family must be named: nothing silently gets SD's tensors
    sd = spec.model_spec("sd")
    assert sd.component_names == ("text_encoder", "unet", "vae_decoder", "vae_encoder")
    assert sd.component("unet").input_names == ("sample", "timestep", "encoder_hidden_states")
    assert spec.model_spec("sd") is sd and sd.denoiser is sd.component("unet")
    with pytest.raises(TypeError, match="ComponentSpec"):
        spec.shapes("unet", {})  # a bare name is not a component: pass the model's own


def test_sdxl_components_and_unet_inputs():
    xl = spec.model_spec("sdxl")
    assert xl.component_names == ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")
    unet = xl.component("unet")
    assert unet.input_names == ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")
    shapes = spec.shapes(unet, {**SDXL, "B": 2, "h": 128, "w": 96, "L": 77})
    assert shapes["encoder_hidden_states"] == (2, 77, 2048)
    assert shapes["text_embeds"] == (2, 1280) and shapes["time_ids"] == (2, 6)
    te2 = spec.shapes(xl.component("text_encoder_2"), {**SDXL, "B": 3})
    assert te2 == {"input_ids": (3, 77), "text_embeds": (3, 1280), "hidden_states": (32, 3, 77, 1280)}
    assert spec.dynamic_axes(xl.component("text_encoder"))["hidden_states"] == {1: "B"}
    assert xl.symbols() == ("C", "Cin", "S", "D", "f", "D1", "D2", "K1", "K2", "P", "T")


def test_refiner_has_only_the_second_encoder_and_lcm_adds_timestep_cond():
    refiner = spec.model_spec("sdxl-refiner")
    assert refiner.text_encoders == ("text_encoder_2",) and not refiner.has("text_encoder")
    values = {**SDXL, "T": 5, "D": 1280}
    assert spec.shapes(refiner.component("unet"), {**values, "B": 1, "h": 8, "w": 8, "L": 77})["time_ids"] == (1, 5)
    lcm = spec.model_spec("sd", ["timestep_cond"])
    unet = lcm.component("unet")
    assert unet.input_names[-1] == "timestep_cond"
    assert spec.shapes(unet, {**SDXL, "D": 768, "G": 256, "B": 2, "h": 8, "w": 8, "L": 77})["timestep_cond"] == (2, 256)
    assert spec.model_spec("sdxl", ("timestep_cond",)).component("unet").input_names[-1] == "timestep_cond"


def test_unknown_family_or_variant_is_named():
    with pytest.raises(SdrtError, match="unknown model family 'qwen-image'.*knows sd, sdxl, sdxl-refiner"):
        spec.model_spec("qwen-image")
    with pytest.raises(SdrtError, match="unknown model variant 'lora' for the sd family"):
        spec.model_spec("sd", ["lora"])
    with pytest.raises(SdrtError, match="unknown model variant 'hidden_states' for the sdxl family"):
        spec.model_spec("sdxl", ["hidden_states"])
    with pytest.raises(KeyError, match="unknown component 'text_encoder'.*sdxl-refiner"):
        spec.model_spec("sdxl-refiner").component("text_encoder")


def test_optional_tensors_without_model_values_are_left_out():
    """An old manifest (no K1) still gives shapes for what its graphs have."""
    sd_hidden = spec.model_spec("sd", ["hidden_states"]).component("text_encoder")
    values = spec.model_values(latent_channels=4, unet_in_channels=4, text_hidden_size=768, vae_scale_factor=8)
    with pytest.raises(KeyError, match="'K1'"):
        spec.shapes(sd_hidden, {**values, "B": 1})
    sd_text = spec.model_spec("sd").component("text_encoder")
    assert "pooler_output" in spec.shapes(sd_text, {**values, "B": 1}, include_optional=True)


def test_trt_profiles_cover_the_sdxl_inputs_with_guidance_doubling():
    unet = spec.model_spec("sdxl").component("unet")
    request = tp.ProfileRequest(batch=2, height=1024, width=768, min_size=512, max_size=1024)
    rng = tp.dim_range(unet, request, RULE, default_size=1024)
    shapes = tp.input_shapes(unet, SDXL, rng)
    assert shapes["text_embeds"] == ((4, 1280), (4, 1280), (4, 1280))
    assert shapes["time_ids"] == ((4, 6), (4, 6), (4, 6))
    assert shapes["sample"] == ((4, 4, 64, 64), (4, 4, 128, 96), (4, 4, 128, 128))
    plan = trt_buffers.plan(tp.max_shapes(unet, SDXL, rng), {k: np.dtype("float16") for k in shapes} |
                            {"timestep": np.dtype("float32"), "out_sample": np.dtype("float16")})
    assert plan["time_ids"] == trt_buffers.aligned(4 * 6 * 2) and plan["text_embeds"] == 4 * 1280 * 2


def test_trt_profiles_for_the_second_text_encoder_and_lcm():
    te2 = spec.model_spec("sdxl").component("text_encoder_2")
    rng = tp.dim_range(te2, tp.ProfileRequest(batch=3), RULE, default_size=1024)
    assert tp.used_symbols(te2) == ("B",) and rng.min == {"B": 1} and rng.max == {"B": 6}
    assert tp.max_shapes(te2, SDXL, rng)["hidden_states"] == (32, 6, 77, 1280)
    lcm_unet = spec.model_spec("sd", ["timestep_cond"]).component("unet")
    values = {**SDXL, "D": 768, "G": 256}
    rng = tp.dim_range(lcm_unet, tp.ProfileRequest(batch=1, guidance=False), RULE, default_size=512)
    assert tp.input_shapes(lcm_unet, values, rng)["timestep_cond"] == ((1, 256),) * 3
