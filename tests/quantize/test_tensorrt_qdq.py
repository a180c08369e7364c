"""The Q/DQ graphs for TensorRT (int8-symmetric, fp8) build into real TensorRT-RTX engines on this CPU.

TensorRT-RTX builds without a GPU (tests/engines/test_rtx_real_engines.py); running the engines needs
one (GPU-unverified). The int8 scheme (asymmetric activations, for the CPUs) is refused in one line.
"""

from __future__ import annotations

import importlib.util

import onnx
import pytest

from sdrt import cli
from sdrt.engines import trt_cache

pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.skipif(not (importlib.util.find_spec("tensorrt_rtx") and importlib.util.find_spec("polygraphy")),
                       reason="needs tensorrt_rtx and polygraphy: pip install 'sdrt[tensorrt-rtx-build]'"),
]


def _zero_points(folder) -> set:
    model = onnx.load(str(folder / "unet" / "model.onnx"), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    found = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            found.add((onnx.helper.tensor_dtype_to_np_dtype(inits[node.input[2]].data_type).name,
                       bool(onnx.numpy_helper.to_array(inits[node.input[2]]).any())))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int8-symmetric", "fp8"])
def test_tensorrt_schemes_build_with_tensorrt_rtx(quantize_tiny, scheme, capsys):
    out, _ = quantize_tiny(scheme, min_psnr=15.0)
    zero_points = _zero_points(out)
    assert zero_points == ({("int8", False)} if scheme == "int8-symmetric" else {("float8_e4m3fn", False)})
    assert cli.main(["build", "--model", str(out), "--backend", "tensorrt_rtx", "--components", "unet"]) == 0, \
        capsys.readouterr().err
    (entry,) = trt_cache.read_entries(trt_cache.store_root(out, "tensorrt_rtx"), "unet")
    assert entry.engine_file.stat().st_size > 100_000
    assert entry.info["typing"]["strongly_typed"]  # the Q/DQ nodes set the layers' types


def test_cpu_int8_is_refused_for_tensorrt(quantize_tiny, capsys):
    out, _ = quantize_tiny("int8")
    assert _zero_points(out) == {("uint8", True)}  # asymmetric activations
    assert cli.main(["build", "--model", str(out), "--backend", "tensorrt_rtx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "quantize with --scheme int8-symmetric" in err
