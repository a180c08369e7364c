"""A ControlNet on a quantized UNet: the residual-taking graph is made from the Q/DQ graph as from the float one
(sdrt.residual_graph keeps what the quantizer kept: the graph's residual marks)."""

from __future__ import annotations

import numpy as np

from sdrt.quantize.gate import psnr
from sdrt.runtime import Pipeline


def test_controlnet_on_the_int8_unet(tiny_onnx, tiny_controlnet_onnx, quantize_tiny):
    out, _ = quantize_tiny("int8")
    control = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    call = dict(num_inference_steps=3, height=64, width=64, seed=4, output_type="np")
    images = {}
    for name, folder in (("float", tiny_onnx), ("int8", out)):
        pipe = Pipeline.load(folder, backend="ort-cpu", controlnet=tiny_controlnet_onnx)
        try:
            images[name] = pipe("a cat", control_image=control, **call).images[0]
        finally:
            pipe.close()
    plain = Pipeline.load(out, backend="ort-cpu")
    try:
        images["int8 plain"] = plain("a cat", **call).images[0]
    finally:
        plain.close()
    assert psnr(images["int8"], images["float"]) > 18.0  # as without a ControlNet (tiny: random weights)
    assert psnr(images["int8"], images["int8 plain"]) < psnr(images["int8"], images["float"])  # it steers
