"""Optimization profiles from the spec: static by default, dynamic on request, CFG doubles the UNet."""

from __future__ import annotations

import pytest

from sdrt import spec
from sdrt.engines import trt_profiles as tp
from sdrt.errors import SdrtError
from sdrt.manifest import SizeRule

SD = spec.model_spec("sd")
C = SD.component  # the sd family's components by name

RULE = SizeRule(latent_multiple=8, min_latent=32, max_latent=128, vae_scale_factor=8)  # 256..1024 px
VALUES = {"C": 4, "Cin": 9, "S": 77, "D": 768, "f": 8}


def rng(component, **kw):
    return tp.dim_range(C(component), tp.ProfileRequest(**kw), RULE, default_size=512)


def test_used_symbols_follow_the_spec():
    assert tp.used_symbols(C("text_encoder")) == ("B",)
    assert tp.used_symbols(C("unet")) == ("B", "h", "w", "L")  # L: the text tokens it attends to
    assert tp.used_symbols(C("vae_decoder")) == ("B", "h", "w")


def test_static_by_default_at_the_models_size_with_cfg_doubling_the_unet():
    r = rng("unet")
    assert r.static and r.min == {"B": 2, "h": 64, "w": 64, "L": 77}
    assert rng("vae_decoder").max == {"B": 1, "h": 64, "w": 64}
    assert rng("unet", guidance=False).max["B"] == 1


def test_text_encoder_takes_one_row_per_prompt_up_to_twice_the_images():
    r = rng("text_encoder", batch=3)
    assert r.min == {"B": 1} and r.opt == {"B": 6} and r.max == {"B": 6}
    assert rng("text_encoder", batch=3, guidance=False).max == {"B": 3}


def test_dynamic_profile_puts_opt_at_the_requested_size():
    r = rng("unet", batch=2, height=768, width=512, min_size=256, max_size=1024, max_batch=4)
    assert r.min == {"B": 2, "h": 32, "w": 32, "L": 77}
    assert r.opt == {"B": 4, "h": 96, "w": 64, "L": 77}
    assert r.max == {"B": 8, "h": 128, "w": 128, "L": 77}
    assert not r.static


def test_dynamic_range_defaults_to_the_requested_sides():
    r = rng("vae_decoder", height=768, width=512, max_size=1024)
    assert (r.min["h"], r.min["w"], r.max["h"], r.max["w"]) == (64, 64, 128, 128)
    batch_only = rng("vae_decoder", height=768, width=512, max_batch=2)
    assert batch_only.min == {"B": 1, "h": 96, "w": 64} and batch_only.max == {"B": 2, "h": 96, "w": 64}


@pytest.mark.parametrize("kw, words", [
    ({"height": 500}, "not a multiple of 64"),
    ({"height": 2048}, "outside the sizes this model supports"),
    ({"min_size": 128}, "outside the sizes"),
    ({"min_size": 768, "max_size": 512}, "larger than --max-size"),
    ({"height": 768, "max_size": 640}, "outside --min-size"),
    ({"batch": 3, "max_batch": 2}, "larger than --max-batch"),
    ({"batch": 0}, "positive whole number"),
])
def test_bad_requests_are_one_line_errors(kw, words):
    with pytest.raises(SdrtError, match=words):
        rng("unet", **kw)


def test_input_shapes_come_from_the_spec():
    shapes = tp.input_shapes(C("unet"), VALUES, rng("unet", height=768, width=512, min_size=256, max_size=1024))
    assert set(shapes) == {"sample", "timestep", "encoder_hidden_states"}
    assert shapes["sample"] == ((2, 9, 32, 32), (2, 9, 96, 64), (2, 9, 128, 128))
    assert shapes["timestep"] == ((2,), (2,), (2,))
    assert shapes["encoder_hidden_states"][2] == (2, 77, 768)
    vae = tp.input_shapes(C("vae_encoder"), VALUES, rng("vae_encoder"))
    assert vae["sample"][2] == (1, 3, 512, 512)
    assert tp.max_shapes(C("text_encoder"), VALUES, rng("text_encoder"))["pooler_output"] == (2, 768)


def test_covers_and_json_round_trip():
    r = rng("unet", min_size=256, max_size=768)
    assert r.covers({"B": 2, "h": 32, "w": 96, "L": 77}) and not r.covers({"B": 2, "h": 32, "w": 97, "L": 77})
    assert not r.covers({"B": 4, "h": 64, "w": 64, "L": 77}) and not r.covers({"B": 2, "h": 32, "w": 96, "L": 154})
    assert tp.DimRange.from_json(r.to_json()) == r


@pytest.mark.parametrize("component, dims", [
    ("unet", {"B": 6, "h": 96, "w": 64, "L": 77}), ("unet", {"B": 3, "h": 40, "w": 40, "L": 154}),
    ("text_encoder", {"B": 2}), ("vae_decoder", {"B": 2, "h": 48, "w": 128}),
])
def test_request_for_dims_builds_a_profile_that_covers_them(component, dims):
    guidance = not (component == "unet" and dims["B"] % 2)
    req = tp.request_for(C(component), dims, 8, guidance)
    assert tp.dim_range(C(component), req, RULE, 512).covers(dims)


def test_describe_and_build_command_speak_in_images_and_pixels():
    r = rng("unet", batch=1, height=768, width=512, min_size=256, max_size=1024)
    text = tp.describe(C("unet"), r, 8)
    assert "batch 2" in text and "256x256 .. 1024x1024 px" in text
    cmd = tp.build_command("out/m", "tensorrt", tp.ProfileRequest(batch=2, height=768, width=512, max_size=1024),
                           ("unet",), force=True)
    assert cmd == ("sdrt build --model out/m --backend tensorrt --height 768 --width 512 --batch 2 "
                   "--max-size 1024 --components unet --force")


def test_a_second_text_encoder_has_the_first_ones_batch_rule():
    from sdrt.engines.trt_profiles import batch_factors

    te2 = spec.model_spec("sdxl").component("text_encoder_2")
    assert batch_factors(te2, True) == batch_factors(C("text_encoder"), True) == (0, 2)
    assert batch_factors(te2, False) == (0, 1)
    # every component of every family carries its batch rule (the spec's hint), so none can lack one
    for family in spec.FAMILIES.values():
        for comp in family.components(family.variants):
            assert all(lo <= hi and hi >= 1 for lo, hi in comp.batch), comp.name


def test_long_prompts_widen_the_unets_token_range():
    r = rng("unet", max_tokens=231)
    assert (r.min["L"], r.opt["L"], r.max["L"]) == (77, 77, 231) and not r.static
    assert rng("text_encoder", max_tokens=231).max == {"B": 2}  # each chunk runs the encoder on its own
    assert "L" not in rng("vae_decoder", max_tokens=231).max
    with pytest.raises(SdrtError, match="--max-tokens 50 is below the 77 tokens"):
        rng("unet", max_tokens=50)


def test_a_call_past_the_built_tokens_names_the_build_that_covers_it():
    request = tp.request_for(C("unet"), {"B": 2, "h": 64, "w": 64, "L": 154}, 8, guidance=True)
    assert "--max-tokens 154" in tp.build_command("out", "tensorrt", request)
    covering = rng("unet", max_tokens=154)
    assert covering.covers({"B": 2, "h": 64, "w": 64, "L": 154})
    assert "--max-tokens" not in tp.build_command("out", "tensorrt", tp.ProfileRequest())
