"""The trained `shapes` model quantized to int8 passes its gate: PSNR and the detector's prompt following.

The issue's bounds, checked by the gate itself (sdrt.quantize.gate): prompt following within 5 points of
fp32, and the same scene (colour, shape, background) as fp32 in at least 7 of 8 images. Measured here:
PSNR 40.8 dB, SSIM 0.993, prompt following 65.0% vs 68.3%, the same scene in 58 of 60 images.
"""

from __future__ import annotations

from sdrt.manifest import Manifest
from sdrt.quantize import Request, quantize_model
from sdrt.quantize.gate import MAX_ACCURACY_DROP, MIN_SAME_SCENE


def test_shapes_int8_passes_the_shapes_gate(onnx_export, tmp_path):
    out = tmp_path / "shapes-int8"
    report = quantize_model(Request(model=onnx_export("shapes"), out=out, steps=20, guidance_scale=5.0))
    assert report["set"]["kind"] == "shapes"  # auto: the detector, for a folder exported from the preset
    shapes = report["shapes"]
    assert report["passed"] and shapes["images"] == 60
    assert shapes["float_accuracy"] - shapes["accuracy"] <= MAX_ACCURACY_DROP
    assert shapes["same_scene"] >= MIN_SAME_SCENE * shapes["images"]
    assert report["psnr_db_mean"] > 35.0 and report["ssim_mean"] > 0.98  # parity to float: measured 40.8 dB
    calibration = Manifest.load(out).components["unet"]["quantization"]["calibration"]
    assert calibration["source"] == "built-in shapes captions"
