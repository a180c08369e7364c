"""Quantized UNets of the other modes and families: img2img, an inpainting UNet (calibrated and gated
with an image and a mask), and SDXL (its added conditioning recorded with the rest)."""

from __future__ import annotations

import numpy as np

from sdrt.manifest import Manifest
from sdrt.quantize import Request, quantize_model
from sdrt.quantize.gate import psnr
from sdrt.runtime import Pipeline

from tests.quantize.conftest import FAST


def test_img2img_on_the_int8_unet(tiny_onnx, quantize_tiny):
    out, _ = quantize_tiny("int8")
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    results = []
    for folder in (tiny_onnx, out):
        pipe = Pipeline.load(folder, backend="ort-cpu")
        try:
            results.append(pipe("a cat", image=image, strength=0.6, num_inference_steps=4, seed=2,
                                output_type="np").images[0])
        finally:
            pipe.close()
    assert psnr(*results) > 18.0 and not np.array_equal(*results)


def test_inpainting_unet_quantizes_with_image_and_mask(onnx_export, tmp_path):
    out = tmp_path / "inpaint-int8"
    report = quantize_model(Request(model=onnx_export("tiny-inpaint"), out=out, min_psnr=15.0, **FAST))
    assert report["passed"] and report["images"] == 8
    calibration = Manifest.load(out).components["unet"]["quantization"]["calibration"]
    assert calibration["samples"] >= 8 * FAST["steps"] * 0.5  # 8 built-in prompts, img2img runs part of the steps


def test_sdxl_unet_quantizes_with_its_added_conditioning(onnx_export, tmp_path):
    out = tmp_path / "sdxl-int8"
    report = quantize_model(Request(model=onnx_export("tiny-sdxl"), out=out, min_psnr=15.0, **FAST))
    assert report["passed"]
    pipe = Pipeline.load(out, backend="openvino")
    try:
        image = pipe("a cat", num_inference_steps=2, height=64, width=64, seed=1, output_type="np").images[0]
    finally:
        pipe.close()
    assert np.isfinite(image).all()
