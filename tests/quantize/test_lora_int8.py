"""A LoRA on an int8 UNet without re-quantizing: float side paths beside the int8 layers (openvino).

The error the int8 UNet adds with a LoRA, vs the float UNet with the LoRA fused into its weights (sdrt's
merged path on ort-cpu, itself at parity with diffusers' fused LoRA: tests/runtime/lora/test_parity.py),
is about the error it adds without one: the side path itself adds none to speak of.
"""

from __future__ import annotations

import pytest

from sdrt.errors import SdrtError
from sdrt.quantize.gate import psnr
from sdrt.runtime import Pipeline

from tests.runtime.lora.helpers import map_shapes, write_kohya

CALL = {"num_inference_steps": 3, "height": 64, "width": 64, "seed": 5, "output_type": "np"}


def _image(folder, backend, loras=()):
    pipe = Pipeline.load(folder, backend=backend, loras=loras)
    try:
        return pipe("a photograph of a dog", **CALL).images[0], pipe
    finally:
        pipe.close()


def test_lora_side_paths_on_the_int8_unet(tiny_onnx, quantize_tiny, tmp_path):
    out, _ = quantize_tiny("int8")
    lora = write_kohya(tmp_path / "lora.safetensors", map_shapes(tiny_onnx))
    float_base, _ = _image(tiny_onnx, "ort-cpu")
    float_lora, _ = _image(tiny_onnx, "ort-cpu", [lora])  # fused into the float weights
    int8_base, _ = _image(out, "openvino")
    int8_lora, pipe = _image(out, "openvino", [lora])
    assert pipe.adapters.branched == {"unet"}  # side paths, nothing merged or re-quantized
    effect = psnr(float_base, float_lora)
    quantized_error = psnr(int8_base, float_base)
    with_lora_error = psnr(int8_lora, float_lora)
    assert effect < quantized_error - 3  # the LoRA changes the image more than int8 does
    assert psnr(int8_lora, int8_base) < quantized_error - 3  # the LoRA acts on the int8 UNet
    assert with_lora_error > quantized_error - 1.5  # measured 26.9 vs 27.3 dB: the side path adds ~nothing
    # every layer the LoRA targets got its branch on the int8 graph, as on the float one
    from sdrt.engines.openvino import OpenVinoBackend
    from sdrt.manifest import Manifest

    int8_branches = OpenVinoBackend().branchable(Manifest.load(out), "unet")
    float_branches = OpenVinoBackend().branchable(Manifest.load(tiny_onnx), "unet")
    assert int8_branches == float_branches and len(int8_branches) > 10


def test_merged_lora_on_a_quantized_unet_is_refused(quantize_tiny, tiny_onnx, tmp_path):
    out, _ = quantize_tiny("int8")
    lora = write_kohya(tmp_path / "lora.safetensors", map_shapes(tiny_onnx))
    pipe = Pipeline.load(out, backend="ort-cpu")
    try:
        before = pipe("a photograph of a dog", **CALL).images[0]
        with pytest.raises(SdrtError, match=r"the unet is quantized \(int8\): a LoRA on it runs as float side paths"
                                            r".*use --backend openvino"):
            pipe.set_loras([lora])
        assert (pipe("a photograph of a dog", **CALL).images[0] == before).all()  # left as it was
    finally:
        pipe.close()
