"""The component spec: shapes, dynamic axes and dtypes every other module derives from it."""

import pytest

from sdrt import spec

SD = spec.model_spec("sd")
C = SD.component  # the sd family's components by name
SD15 = spec.model_values(latent_channels=4, unet_in_channels=4, text_hidden_size=768, vae_scale_factor=8)


def test_unet_shapes_follow_symbols():
    s = spec.shapes(C("unet"), {**SD15, "B": 2, "h": 64, "w": 48, "L": 154})
    assert s == {"sample": (2, 4, 64, 48), "timestep": (2,), "encoder_hidden_states": (2, 154, 768),
                 "out_sample": (2, 4, 64, 48)}


def test_vae_shapes_scale_by_factor():
    dec = spec.shapes(C("vae_decoder"), {**SD15, "B": 1, "h": 32, "w": 40})
    assert dec["sample"] == (1, 3, 256, 320)
    enc = spec.shapes(C("vae_encoder"), {**SD15, "B": 3, "h": 32, "w": 40})
    assert enc["latent_parameters"] == (3, 8, 32, 40) and enc["sample"] == (3, 3, 256, 320)


def test_inpainting_unet_input_channels():
    values = {**SD15, "Cin": 9, "B": 2, "h": 8, "w": 8, "L": 77}
    s = spec.shapes(C("unet"), values)
    assert s["sample"] == (2, 9, 8, 8) and s["out_sample"] == (2, 4, 8, 8)


def test_optional_outputs_only_on_request():
    values = {**SD15, "B": 1}
    assert "pooler_output" not in spec.shapes(C("text_encoder"), values)
    assert spec.shapes(C("text_encoder"), values, include_optional=True)["pooler_output"] == (1, 768)


def test_dynamic_axes():
    assert spec.dynamic_axes(C("unet"))["sample"] == {0: "B", 2: "h", 3: "w"}
    assert spec.dynamic_axes(C("unet"))["timestep"] == {0: "B"}
    assert spec.dynamic_axes(C("unet"))["encoder_hidden_states"] == {0: "B", 1: "L"}  # long prompts
    assert spec.dynamic_axes(C("text_encoder")) == {"input_ids": {0: "B"}, "last_hidden_state": {0: "B"},
                                                 "pooler_output": {0: "B"}}
    assert spec.dynamic_axes(C("vae_decoder"))["sample"] == {0: "B", 2: "f*h", 3: "f*w"}


def test_dtypes_follow_precision_except_fixed_ones():
    unet = C("unet")
    assert spec.dtype_of(unet.tensor("sample"), "fp16") == "float16"
    assert spec.dtype_of(unet.tensor("timestep"), "fp16") == "float32"
    assert spec.dtype_of(C("text_encoder").tensor("input_ids"), "fp16") == "int32"


def test_errors_name_the_problem():
    with pytest.raises(KeyError, match="unknown component 'clip' for the sd family"):
        C("clip")
    with pytest.raises(KeyError, match="symbol 'h' has no value"):
        spec.evaluate("f*h", {"f": 8})


def test_unet_batch_doubles_under_guidance():
    assert spec.unet_batch(3, guidance=True) == 6
    assert spec.unet_batch(3, guidance=False) == 3
