"""Flux on the engines: TensorRT profiles and buffer plans of its tensors, OpenVINO (f32, bf16) on every
component, and real TensorRT-RTX builds of the tiny fp16 export (built on a CPU; running needs a GPU)."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from sdrt import cli, spec
from sdrt.engines import trt_buffers, trt_cache, trt_profiles as tp
from sdrt.errors import SdrtError
from sdrt.manifest import Manifest, SizeRule

#: FLUX.1-dev's symbols: 16 latent channels packed into 64-wide tokens, T5-XXL's 4096, CLIP-L's 768 pooled
FLUX = spec.model_values(latent_channels=16, unet_in_channels=64, text_hidden_size=4096, vae_scale_factor=8,
                         extra={"P": 768})
RULE = SizeRule(latent_multiple=2, min_latent=2, max_latent=512, vae_scale_factor=8)


def test_transformer_profile_counts_tokens_of_2x2_latent_patches():
    """h and w are latent pixels, the transformer's tensors h/2*w/2 tokens: 1024 px -> 64 x 64 = 4096 tokens."""
    dev = spec.model_spec("flux", ["guidance"])
    transformer = dev.component("transformer")
    request = tp.ProfileRequest(batch=1, height=1024, width=768, min_size=512, max_size=1024, guidance=False,
                                tokens=512)
    rng = tp.dim_range(transformer, request, RULE, default_size=1024)
    assert rng.min == {"B": 1, "h": 64, "w": 64, "L": 512} and rng.max == {"B": 1, "h": 128, "w": 128, "L": 512}
    shapes = tp.input_shapes(transformer, FLUX, rng)
    assert shapes["hidden_states"] == ((1, 1024, 64), (1, 64 * 48, 64), (1, 4096, 64))
    assert shapes["img_ids"] == ((1024, 3), (64 * 48, 3), (4096, 3))
    assert shapes["txt_ids"] == ((512, 3),) * 3 and shapes["guidance"] == ((1,),) * 3
    assert shapes["encoder_hidden_states"] == ((1, 512, 4096),) * 3 and shapes["pooled_projections"] == ((1, 768),) * 3
    assert tp.describe(transformer, rng, 8, guidance=False) == \
        "batch 1 (transformer batch; 1x per image), 512x512 .. 1024x1024 px"
    # the VAE of the same request: the same latent dims
    vae = tp.dim_range(dev.component("vae_decoder"), request, RULE, default_size=1024)
    assert vae.max == {"B": 1, "h": 128, "w": 128}
    # true CFG: the negative prompt's rows beside the prompt's
    cfg = tp.dim_range(transformer, tp.ProfileRequest(batch=2, height=512, width=512, tokens=256), RULE, 1024)
    assert cfg.opt == {"B": 4, "h": 64, "w": 64, "L": 256}
    assert tp.request_for(transformer, cfg.opt, 8, guidance=True) == tp.ProfileRequest(
        batch=2, height=512, width=512, tokens=256)


def test_transformer_buffer_plan_and_the_schnell_inputs():
    schnell = spec.model_spec("flux").component("transformer")
    assert "guidance" not in schnell.input_names
    rng = tp.dim_range(schnell, tp.ProfileRequest(height=1024, width=1024, guidance=False, tokens=256), RULE, 1024)
    dtypes = {t.name: np.dtype(spec.dtype_of(t, "fp16")) for t in schnell.tensors}
    plan = trt_buffers.plan(tp.max_shapes(schnell, FLUX, rng), dtypes)
    assert plan["hidden_states"] == plan["out_hidden_states"] == 4096 * 64 * 2
    assert plan["img_ids"] == 4096 * 3 * 4 and plan["txt_ids"] == trt_buffers.aligned(256 * 3 * 4)
    t5 = spec.model_spec("flux").component("text_encoder_2")
    assert tp.used_symbols(t5) == ("B", "L")
    assert tp.max_shapes(t5, FLUX, tp.dim_range(t5, tp.ProfileRequest(tokens=512, guidance=False), RULE, 1024))["last_hidden_state"] \
        == (1, 512, 4096)


def test_build_options_for_flux_are_checked_before_any_build(tiny_flux_onnx, capsys):
    for argv, message in ((["--max-sequence-length", "513"], "between 1 and 512"),
                          (["--no-guidance"], "--no-guidance is the UNet families'"),
                          (["--height", "1000"], "not a multiple of 16")):
        assert cli.main(["build", "--model", str(tiny_flux_onnx), "--backend", "tensorrt_rtx", *argv]) == 2
        assert message in capsys.readouterr().err
    from sdrt.engines.commands_build import text_tokens

    assert text_tokens(Manifest.load(tiny_flux_onnx), None) == 512
    with pytest.raises(SdrtError, match="--max-sequence-length is for models with a T5 encoder"):
        text_tokens(Manifest.load(tiny_flux_onnx).__class__(tiny_flux_onnx, {"pipeline": {"family": "sd"}}), 77)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_openvino_runs_every_flux_component_in_f32_and_bf16(tiny_flux_onnx, tmp_path):
    """f32 equals ort-cpu (both are the exported fp32 graph); bf16 is lossy, only a picture close to it."""
    from sdrt.reference import TorchReplay
    from sdrt.runtime import Pipeline
    from sdrt.runtime.images import psnr

    folder = tmp_path / "tiny-flux"
    shutil.copytree(tiny_flux_onnx, folder, ignore=shutil.ignore_patterns("engines"))
    call = dict(num_inference_steps=3, height=64, width=96, output_type="np", negative_prompt="blurry",
                true_cfg_scale=3.0, num_images_per_prompt=2)
    base = Pipeline.load(tiny_flux_onnx, "ort-cpu")("a red bicycle", generator=TorchReplay(1), **call).images
    for precision, floor in (("f32", 60.0), ("bf16", 15.0)):
        pipe = Pipeline.load(folder, "openvino", precision=precision)
        assert set(pipe.engines) >= {"text_encoder", "text_encoder_2", "transformer", "vae_decoder"}
        out = pipe("a red bicycle", generator=TorchReplay(1), **call).images
        image = pipe("a red bicycle", image=(out[0] * 255).astype(np.uint8), strength=0.5, num_inference_steps=2,
                     output_type="np").images  # img2img: the VAE encoder too
        assert image.shape == (1, 64, 96, 3) and np.isfinite(image).all()
        quality = psnr(out, base)
        print(f"openvino {precision}: PSNR {quality:.1f} dB against ort-cpu fp32")
        assert quality >= floor


@pytest.mark.tensorrt
@pytest.mark.skipif(not (importlib.util.find_spec("tensorrt_rtx") and importlib.util.find_spec("polygraphy")),
                    reason="needs tensorrt_rtx and polygraphy: pip install 'sdrt[tensorrt-rtx-build]'")
def test_every_component_of_the_tiny_flux_fp16_export_builds_with_tensorrt_rtx(onnx_export, tmp_path, capsys):
    import onnx

    folder = tmp_path / "tiny-flux-fp16"
    shutil.copytree(onnx_export("tiny-flux", "fp16"), folder, ignore=shutil.ignore_patterns("engines"))
    manifest = Manifest.load(folder)
    assert manifest.precision("transformer") == "fp16" and manifest.precision("text_encoder_2") == "fp32"
    profiles = {"static": ["--height", "64", "--width", "96", "--max-sequence-length", "77"],
                "dynamic-true-cfg": ["--height", "128", "--width", "128", "--min-size", "64", "--max-size", "256",
                                     "--max-batch", "2", "--true-cfg"]}
    for name, flags in profiles.items():
        assert cli.main(["build", "--model", str(folder), "--backend", "tensorrt_rtx", *flags]) == 0, capsys.readouterr()
    for component in manifest.spec.component_names:
        built = trt_cache.read_entries(trt_cache.store_root(folder, "tensorrt_rtx"), component)
        assert len(built) == 2, component
        attention = sum(n.op_type == "Attention" for n in onnx.load(str(folder / component / "model.onnx"),
                                                                     load_external_data=False).graph.node)
        for entry in built:
            assert entry.engine_file.stat().st_size > 100_000  # a real serialized plan
            assert entry.info["network"]["attention_layers_marked_decomposable"] == attention
    transformer = {e.profile.static: e.profile for e in trt_cache.read_entries(
        trt_cache.store_root(folder, "tensorrt_rtx"), "transformer")}
    assert transformer[True].min == {"B": 1, "h": 8, "w": 12, "L": 77}  # 64 x 96 px: latent 8 x 12 = 4 x 6 tokens
    assert transformer[False].min == {"B": 2, "h": 8, "w": 8, "L": 512}
    assert transformer[False].max == {"B": 4, "h": 32, "w": 32, "L": 512}
