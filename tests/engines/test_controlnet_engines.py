"""ControlNet on the engines: TensorRT profiles and buffer plans of the ControlNet and of the residual-taking
UNet (from the spec, with the residuals' rounded-up sizes), real TensorRT-RTX builds of both from the tiny
fp16 exports (no GPU needed), and OpenVINO running a ControlNet like ONNX Runtime does."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from sdrt import cli, spec
from sdrt.engines import trt_buffers, trt_cache, trt_profiles as tp
from sdrt.manifest import SizeRule

#: SD 1.5's layout: conv_in, 3 x (2 resnets + downsampler), 2 resnets; mid 1280 at 1/8
SD15 = spec.Residuals(((320, 1), (320, 1), (320, 1), (320, 2), (640, 2), (640, 2), (640, 4), (1280, 4), (1280, 4),
                       (1280, 8), (1280, 8), (1280, 8)), (1280, 8))
VALUES = {"C": 4, "Cin": 4, "S": 77, "D": 768, "f": 8}
RULE = SizeRule(latent_multiple=1, min_latent=3, max_latent=256, vae_scale_factor=8)


def test_residual_unet_profile_and_buffers_cover_every_residual():
    unet = spec.model_spec("sd", residuals=SD15).denoiser
    r = tp.dim_range(unet, tp.ProfileRequest(height=520, width=776, min_size=264, max_size=1032), RULE, 512)
    shapes = tp.input_shapes(unet, VALUES, r)
    assert shapes["down_block_residual_0"] == ((2, 320, 33, 33), (2, 320, 65, 97), (2, 320, 129, 129))
    # 65 / 8 and 97 / 8 round up, as the UNet's stride-2 convolutions do
    assert shapes["mid_block_residual"][1] == (2, 1280, 9, 13)
    assert shapes["down_block_residual_3"][1] == (2, 320, 33, 49)
    plan = trt_buffers.plan(tp.max_shapes(unet, VALUES, r), {n: np.dtype("float16") for n in unet.input_names
                                                             + unet.output_names})
    assert plan["down_block_residual_11"] == trt_buffers.aligned(2 * 1280 * 17 * 17 * 2)


def test_controlnet_profile_runs_one_row_per_image_in_guess_mode():
    controlnet = spec.controlnet_spec("sd", SD15, 3).component("controlnet")
    r = tp.dim_range(controlnet, tp.ProfileRequest(batch=2, max_batch=2), RULE, 512)
    assert r.min["B"] == 1 and r.max["B"] == 4  # guess mode: the prompt half only; else both halves
    shapes = tp.input_shapes(controlnet, VALUES, r)
    assert shapes["controlnet_cond"][2] == (4, 3, 512, 512)
    assert shapes["conditioning_scale"] == ((13,), (13,), (13,))
    xl = spec.controlnet_spec("sdxl", SD15, 3).component("controlnet")
    assert xl.input_names[-2:] == ("text_embeds", "time_ids")


rtx = pytest.mark.skipif(not (importlib.util.find_spec("tensorrt_rtx") and importlib.util.find_spec("polygraphy")),
                         reason="needs tensorrt_rtx and polygraphy: pip install 'sdrt[tensorrt-rtx-build]'")


@pytest.mark.tensorrt
@rtx
def test_tiny_fp16_controlnet_and_residual_unet_build_with_tensorrt_rtx(onnx_export, controlnet_export, tmp_path,
                                                                        capsys):
    base = tmp_path / "tiny-fp16"
    shutil.copytree(onnx_export("tiny", "fp16"), base, ignore=shutil.ignore_patterns("engines"))
    net = tmp_path / "cn-fp16"
    shutil.copytree(controlnet_export("tiny-controlnet", precision="fp16"), net, ignore=shutil.ignore_patterns("engines"))
    size = ["--height", "32", "--width", "32"]
    assert cli.main(["build", "--model", str(net), "--backend", "tensorrt_rtx", *size]) == 0, capsys.readouterr().err
    assert cli.main(["build", "--model", str(base), "--backend", "tensorrt_rtx", "--controlnet", "--components",
                     "unet", *size]) == 0, capsys.readouterr().err
    for folder, component in ((net, "controlnet"), (base, "unet")):
        (entry,) = trt_cache.read_entries(trt_cache.store_root(folder, "tensorrt_rtx"), component)
        assert entry.engine_file.stat().st_size > 100_000  # a real serialized plan
    assert (base / "engines" / "graphs").is_dir()  # the residual graph the UNet engine was built from


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino: pip install 'sdrt[openvino]'")
def test_openvino_runs_a_controlnet_like_onnx_runtime(tiny_onnx, tiny_controlnet_onnx):
    from sdrt.runtime import Pipeline
    from sdrt.runtime.images import psnr

    control = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    call = dict(control_image=control, num_inference_steps=3, height=32, width=32, seed=2, output_type="np",
                scheduler="euler", control_guidance_end=0.7)
    images = {}
    for backend in ("ort-cpu", "openvino"):
        pipe = Pipeline.load(tiny_onnx, backend=backend, controlnet=tiny_controlnet_onnx)
        images[backend] = pipe("a cat", **call).images
        pipe.close()
    assert psnr(images["openvino"], images["ort-cpu"]) > 40
