"""The UNet step profile: kernel precision from exec_type, op categories, FLOPs, and a real tiny run."""

from __future__ import annotations

import importlib.util
import json
from argparse import Namespace

import pytest

from sdrt.bench import unet_profile as up

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino not installed (sdrt[openvino])")


def test_precision_and_category_of_a_kernel():
    assert up.precision_of("brgconv_avx512_bf16") == "bf16"
    assert up.precision_of("gemm_mlas_f32") == "f32" and up.precision_of("unknown") == "other"
    assert up.category("Convolution") == "convolution" and up.category("FullyConnected") == "linear"
    assert up.category("MultiHeadAttention") == "attention" and up.category("MVN") == "rest"
    assert up.category("Subgraph", "node_transpose_8,Softmax_3,node_scaled_dot_product_attention_2") == "attention"
    assert up.category("Subgraph", "Multiply_1,Add_2") == "rest"  # a fused elementwise chain


@needs_openvino
def test_tiny_flops_count_convolutions_linear_layers_and_attention(tiny_onnx):
    dims = up.unet_dims(tiny_onnx, 64, 2)
    flops = up.step_flops(tiny_onnx, dims)
    assert flops["convolution"] > 0 and flops["linear"] > 0 and flops["attention"] > 0
    # attention scales with tokens squared: 4x the tokens, at least 16x its FLOPs... of the largest level
    bigger = up.step_flops(tiny_onnx, up.unet_dims(tiny_onnx, 128, 2))
    assert bigger["attention"] > 8 * flops["attention"] and bigger["convolution"] == pytest.approx(4 * flops["convolution"])


@needs_openvino
def test_tiny_profile_runs_each_config_in_its_own_process(tiny_onnx, tmp_path):
    out = up.run(Namespace(model=str(tiny_onnx), onnx=None, size=32, batch=2, reps=1, ghz=2.0,
                           configs="openvino-bf16-counters,openvino-f32-static,ort-cpu-profile",
                           out=str(tmp_path), timeout=300.0))
    result = json.loads((out / "result.json").read_text())
    bf16 = result["configs"]["openvino-bf16-counters"]["counters"]
    heavy = [k for k in bf16["ms_by_op_type_and_precision"] if k.startswith(("Convolution", "FullyConnected"))]
    assert heavy and all(k.endswith("bf16") for k in heavy)  # bf16 asked: the heavy kernels ran in bf16
    assert result["configs"]["openvino-f32-static"]["step_s"] > 0
    ort = result["configs"]["ort-cpu-profile"]["counters"]
    assert "MultiHeadAttention" in ort["ms_by_op_type"] and ort["ms_by_category"]["convolution"] > 0
    assert result["nominal_peaks"]["avx512_bf16_gflops"] == 2 * result["nominal_peaks"]["fp32_fma_gflops"]
    assert "time by category" in (out / "result.md").read_text()
