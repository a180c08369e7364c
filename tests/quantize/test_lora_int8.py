"""A LoRA on an int8 UNet without re-quantizing: float side paths beside the int8 layers, on ort-cpu
(sdrt.engines.ort_lora_branches) and openvino (sdrt.engines.openvino_lora).

The error the int8 UNet adds with a LoRA, vs the float UNet with the LoRA fused into its weights (sdrt's
merged path on ort-cpu, itself at parity with diffusers' fused LoRA: tests/runtime/lora/test_parity.py),
is about the error it adds without one: the side path itself adds none to speak of.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.quantize.gate import psnr
from sdrt.runtime import Pipeline

from tests.runtime.lora.helpers import map_shapes, write_kohya

CALL = {"num_inference_steps": 3, "height": 64, "width": 64, "seed": 5, "output_type": "np"}


def _image(pipe):
    return pipe("a photograph of a dog", **CALL).images[0]


def _loaded(folder, backend, loras=()):
    pipe = Pipeline.load(folder, backend=backend, loras=loras)
    try:
        return _image(pipe)
    finally:
        pipe.close()


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_lora_side_paths_on_the_int8_unet(tiny_onnx, quantize_tiny, tmp_path, backend):
    out, _ = quantize_tiny("int8")
    shapes = map_shapes(tiny_onnx)
    lora = write_kohya(tmp_path / "a.safetensors", shapes)
    other = write_kohya(tmp_path / "b.safetensors", shapes, seed=1)
    float_base = _loaded(tiny_onnx, "ort-cpu")
    float_lora = _loaded(tiny_onnx, "ort-cpu", [lora])  # fused into the float weights
    pipe = Pipeline.load(out, backend=backend)
    try:
        int8_base = _image(pipe)
        pipe.set_loras([lora])
        assert pipe.adapters.branched == {"unet"}  # side paths: nothing merged, nothing re-quantized
        int8_lora = _image(pipe)
        pipe.set_loras([other])
        assert not np.array_equal(_image(pipe), int8_lora)  # a switch binds the other factors
        pipe.set_loras([])
        assert np.array_equal(_image(pipe), int8_base)  # unloaded: the int8 UNet as it was, bit for bit
    finally:
        pipe.close()
    effect = psnr(float_base, float_lora)
    quantized_error = psnr(int8_base, float_base)
    assert effect < quantized_error - 3  # the LoRA changes the image more than int8 does
    assert psnr(int8_lora, int8_base) < quantized_error - 3  # ... and acts on the int8 UNet
    # measured on both backends: 26.9-27.0 dB with the LoRA, 27.0-27.3 without: the side path adds ~nothing
    assert psnr(int8_lora, float_lora) > quantized_error - 1.5


def test_every_targeted_layer_gets_its_branch(tiny_onnx, quantize_tiny):
    from sdrt.engines.openvino import OpenVinoBackend
    from sdrt.engines.ort import OrtCpuBackend
    from sdrt.manifest import Manifest

    out, _ = quantize_tiny("int8")
    float_branches = OpenVinoBackend().branchable(Manifest.load(tiny_onnx), "unet")
    assert len(float_branches) > 10
    assert OpenVinoBackend().branchable(Manifest.load(out), "unet") == float_branches
    assert OrtCpuBackend().branchable(Manifest.load(out), "unet") == float_branches
    assert OrtCpuBackend().branchable(Manifest.load(tiny_onnx), "unet") == frozenset()  # float: merged as before


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_a_lora_on_3x3_convs_of_a_quantized_unet_is_refused(quantize_tiny, tiny_onnx, tmp_path, backend):
    out, _ = quantize_tiny("int8")
    lora = write_kohya(tmp_path / "locon.safetensors", map_shapes(tiny_onnx, conv=True))
    pipe = Pipeline.load(out, backend=backend)
    try:
        before = _image(pipe)
        with pytest.raises(SdrtError, match=r"the unet is quantized \(int8\): a LoRA on it runs as float side paths"
                                            r".*Linear and 1x1 Conv only"):
            pipe.set_loras([lora])
        assert np.array_equal(_image(pipe), before)  # left as it was
    finally:
        pipe.close()
