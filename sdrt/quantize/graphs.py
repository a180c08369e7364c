"""Quantize one component's ONNX graph into a Q/DQ graph (QuantizeLinear / DequantizeLinear pairs).

- ``int8``, ``int8-symmetric`` and ``fp8``: ONNX Runtime's static quantizer
  (`onnxruntime.quantization.quantize_static`, QDQ format) with the recorded calibration samples:
  weights symmetric per output channel (int8) or per tensor (fp8), activations per tensor from
  MinMax ranges. ``int8``'s activations are uint8 with a zero point (asymmetric: a SiLU's output uses
  the whole range), the pair the CPUs' int8 instructions compute (u8 x s8); ``int8-symmetric``'s are
  signed with zero points 0, what TensorRT requires of a Q/DQ graph (CPUs run it too). Measured on
  the trained `shapes` model's gate (60 images): int8 lost 3.3 points of prompt following and kept
  58/60 scenes, int8-symmetric lost 6.7 points and kept 54/60 (PSNR 40.8 vs 39.8 dB).
- ``int8-weights``: each Conv / MatMul / Gemm weight becomes int8 (symmetric, per output channel)
  followed by a DequantizeLinear; activations stay float, nothing to calibrate (`weights_only`).

What stays float, and why (measured on the trained `shapes` UNet: the relative RMS error of the
UNet output vs float was 3.4% with everything quantized, 2.0% with these kept):

- the first and the last convolution (the latents in, the noise prediction out: the layers whose
  error every step's result carries directly);
- layers that read a concatenation directly: the up blocks' 1x1 shortcut convolutions over the up
  path and the skip connection side by side, channels of very different ranges that one per-tensor
  activation scale cannot serve (on `shapes`, these five 1x1 convs alone made 2.1% of the 3.3%);
- every Gemm: the exporter writes the 2-D Linear layers as Gemm, that is the time embedding, each
  ResNet's time projection and SDXL's added-conditioning embedding (a few rows per call: no time to
  win, and the timestep's precision matters to every layer);
- attention itself (the exporter's fused ``Attention`` op: its softmax and score products) and the
  normalizations: only Conv and MatMul are quantized.

NVIDIA Model Optimizer's ONNX path (`modelopt.onnx.quantization`, 0.47.0) was tried for the
TensorRT graphs and does not run here: its calibration patches ONNX Runtime's calibrators for the
version its `[onnx]` extra pins (onnxruntime-gpu 1.24, onnx 1.21, which would replace this
install's onnxruntime 1.31) and fails with ONNX Runtime 1.31 (KeyError in its calibrator merge, for
int8 and fp8 alike). NNCF (`nncf.quantize` on the ONNX model) runs, but measured a larger error on
the `shapes` UNet (5.4% vs 2.0%), so ONNX Runtime's quantizer writes every scheme.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sdrt.errors import SdrtError

#: ONNX's 2 GB protobuf limit: larger graphs keep their weights in model.onnx.data (sdrt's layout)
PROTOBUF_LIMIT = 2**31 - 2**24
QUANTIZED_OPS = ("Conv", "MatMul")


def kept_float(model: Any) -> list[str]:
    """Names of the quantizable nodes left in float: the first and last Conv, and those reading a Concat
    directly (see the module's docstring). Gemm is not in `QUANTIZED_OPS` at all."""
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    keep = {convs[0], convs[-1]} if convs else set()
    concats = {out for node in model.graph.node if node.op_type == "Concat" for out in node.output}
    keep |= {node.name for node in model.graph.node if node.op_type in QUANTIZED_OPS and node.input[0] in concats}
    return sorted(keep)


def load(path: Path) -> Any:
    """The ONNX model at `path` with its external weights read in. onnx.load refuses an external-data
    file with several hard links (a guard against reading arbitrary files), and sdrt's ONNX Runtime
    cache hard-links every loaded component's weights (engines/ort-cpu/rewrites-*): the bytes are read
    here, from the component's own folder only."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    folder = path.parent.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        file = (folder / info["location"]).resolve()
        if file.parent != folder:
            raise SdrtError(f"{path}: the weights of {tensor.name} point outside its folder ({info['location']}): "
                            f"export the model again")
        offset, length = int(info.get("offset", 0)), int(info.get("length", 0))
        with open(file, "rb") as f:
            f.seek(offset)
            tensor.raw_data = f.read(length) if length else f.read()
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return model


def _weight_bytes(model: Any) -> int:
    """The bytes of the model's initializers (what decides external data: protobuf's own ByteSize()
    fails past 2 GB instead of answering)."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _named_nodes(model: Any) -> None:
    """Give every unnamed node a unique name (the quantizer's exclusions go by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


class _Samples:
    """onnxruntime's CalibrationDataReader over recorded samples, fed only the graph's inputs."""

    def __init__(self, samples: list[dict[str, np.ndarray]], inputs: set[str]):
        self._it = iter([{k: v for k, v in s.items() if k in inputs} for s in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - the MinMax calibrator reads the data once
        pass


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer logs a pre-processing advice on every call (root logger WARNING): not for our users."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def static(source: Path, out: Path, samples: list[dict[str, np.ndarray]], scheme: str) -> dict[str, Any]:
    """int8 or fp8 Q/DQ graph of `source` into `out` (model.onnx, + .data when over 2 GB) from the
    calibration samples; returns what sdrt.json records about it."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = load(source)
    _named_nodes(model)
    keep = kept_float(model)
    inputs = {i.name for i in model.graph.input}
    large = _weight_bytes(model) > PROTOBUF_LIMIT
    int8 = scheme.startswith("int8")
    symmetric = scheme != "int8"
    wtype = QuantType.QInt8 if int8 else QuantType.QFLOAT8E4M3FN
    atype = QuantType.QUInt8 if scheme == "int8" else wtype
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".named.") as tmp:
        named = Path(tmp) / "model.onnx"
        onnx.save(model, str(named), save_as_external_data=large, location="model.onnx.data")
        del model
        with _quiet():
            quantize_static(
                str(named), str(out), _Samples(samples, inputs), quant_format=QuantFormat.QDQ,
                per_channel=int8, activation_type=atype, weight_type=wtype, op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=keep, use_external_data_format=large,
                # fp8: the only method ONNX Runtime's quantizer takes for float types (scales from the
                # distribution's standard deviation, not its extremes)
                calibrate_method=CalibrationMethod.MinMax if int8 else CalibrationMethod.Distribution,
                # biases stay float for TensorRT's schemes (its parser takes no int32 DequantizeLinear);
                # int8's int32 biases let ONNX Runtime fuse whole QLinearConv kernels
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                               "QuantizeBias": scheme == "int8"})
    return {
        "tool": "onnxruntime.quantization", "tool_version": onnxruntime.__version__,
        "weights": "int8, symmetric, per output channel" if int8 else "fp8 e4m3, per tensor",
        "activations": {"int8": "uint8, asymmetric, per tensor (MinMax over the calibration)",
                        "int8-symmetric": "int8, symmetric, per tensor (MinMax over the calibration)",
                        "fp8": "fp8 e4m3, per tensor (ONNX Runtime's Distribution calibration)"}[scheme],
        "quantized_ops": list(QUANTIZED_OPS), "kept_float": keep,
        "kept_float_why": "first and last Conv, layers reading a Concat (skip connections); Gemm (time "
                          "embedding, time projections); attention and norms",
    }


def _weight_axis(node: Any) -> int | None:
    """The output-channel axis of a node's weight (input 1), or None when it is not a plain weight."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "MatMul":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return None


def weights_only(source: Path, out: Path) -> dict[str, Any]:
    """int8-weights: each float Conv / MatMul / Gemm weight initializer -> int8 + DequantizeLinear."""
    import onnx
    from onnx import helper, numpy_helper

    model = load(source)
    _named_nodes(model)
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    keep = set(kept_float(model))
    done: dict[str, str] = {}
    new_inits, dq_nodes = [], []
    for node in graph.node:
        axis = _weight_axis(node)
        if axis is None or node.name in keep or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = node.input[1]
        if name not in done:
            init = inits[name]
            if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) < 2:
                continue
            w = numpy_helper.to_array(init)
            reduce = tuple(i for i in range(w.ndim) if i != axis)
            scale = np.maximum(np.abs(w).max(axis=reduce), np.finfo(np.float32).tiny) / 127.0
            shape = [1] * w.ndim
            shape[axis] = -1
            q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
            new_inits += [numpy_helper.from_array(q, name + "_quantized"),
                          numpy_helper.from_array(scale.astype(np.float32), name + "_scale"),
                          numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + "_zero_point")]
            dq_nodes.append(helper.make_node("DequantizeLinear", [name + "_quantized", name + "_scale",
                                                                  name + "_zero_point"],
                                             [name + "_dequantized"], name=name + "_DequantizeLinear", axis=axis))
            done[name] = name + "_dequantized"
        node.input[1] = done[name]
    if not done:
        raise SdrtError(f"{source} has no Conv, MatMul or Gemm weight to quantize: quantize another component")
    used = {n for node in graph.node for n in node.input}
    kept_inits = [init for init in graph.initializer if init.name in used or init.name not in done]
    del graph.initializer[:]
    graph.initializer.extend([init for init in kept_inits if init.name not in done] + new_inits)
    nodes = dq_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    large = _weight_bytes(model) > PROTOBUF_LIMIT
    onnx.save(model, str(out), save_as_external_data=large, location="model.onnx.data")
    from sdrt import __version__

    return {"tool": "sdrt.quantize.graphs.weights_only", "tool_version": __version__,
            "weights": "int8, symmetric, per output channel, dequantized at load", "activations": "float",
            "quantized_ops": ["Conv", "MatMul", "Gemm"], "kept_float": sorted(keep),
            "kept_float_why": "first and last Conv", "weights_quantized": len(done)}
