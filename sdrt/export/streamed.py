"""Exporting a model larger than memory: trace on the meta device, stream the weights to disk.

Full-size Flux is a 12B-parameter transformer (48 GB in fp32, 24 GB in fp16) and a 4.7B T5 encoder
(19 GB in fp32): more than this 24 GB machine holds, before ONNX's own copies. `sdrt export
--stream-weights` never materialises a component:

1. the source's modules are built from their configs on the **meta device** (no weights; a folder's
   safetensors are not read, a preset's seeded values not drawn);
2. each component is traced there (`torch.export`, then `torch.onnx.export(..., optimize=False)`:
   the exporter's constant folding would need the values) and saved **without initializers**;
3. its weights are then **streamed** into `model.onnx.data`, one tensor at a time, in the dtype the
   graph declares (fp16 under `--precision fp16`, fp32 where the policy keeps fp32: the VAE, T5, the
   fp16 transformer's time embedding), read from the folder's safetensors or drawn from the preset's
   seeded generator in the same order as an in-memory build (the same bits); the initializers are
   attached as external data (location, offset, length) and the weight map (LoRA) is written from
   the same offsets.

What it cannot do is the check against PyTorch: that needs the fp32 module *and* an ONNX Runtime
session of the graph in memory at once. `components.<name>.check` records `skipped` and why. The
graph itself is the one the in-memory export checks: the tests run the streamed export on the tiny
presets and check those graphs against PyTorch. The graph is not constant-folded: the transposes in
front of MatMuls stay ops (ONNX Runtime folds them when it loads the graph).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Mapping

from sdrt import residual_graph, spec
from sdrt.errors import SdrtError
from sdrt.export import check, trace
from sdrt.export.graphs import example_inputs, export_context, wrap
from sdrt.manifest_schema import component_bytes, component_sha256
from sdrt.weight_map import FILE_NAME, FORMAT, VERSION

#: byte alignment of each tensor in model.onnx.data (what memory-mapping readers like)
ALIGN = 64
#: ONNX TensorProto data type -> (torch dtype name, numpy dtype name)
DTYPES = {1: ("float32", "float32"), 10: ("float16", "float16"), 7: ("int64", "int64"), 6: ("int32", "int32")}
SKIPPED = ("not run: a streamed export never holds the fp32 module and an ONNX Runtime session of the graph "
           "in memory together (what the check needs); the same graph, exported from a small model of the "
           "family, passes it in sdrt's tests")


def export_component(src: Any, comp: spec.ComponentSpec, model: spec.ModelSpec, path: Path, *, precision: str,
                     note: str, dims: Mapping[str, int], opset: int,
                     residuals: spec.Residuals | None = None) -> dict[str, Any]:
    """Trace `comp` on the meta device into `path` and stream its weights into `path`.data; its manifest entry."""
    import torch

    started = time.perf_counter()
    module = src.module(comp.source)
    graph_module = copy.deepcopy(module).half() if precision == "fp16" else module
    graph = wrap(comp, graph_module, model)
    prefix = next(name for name, _ in graph.named_children()) + "."  # the wrapper's attribute (initializer names)
    example = example_inputs(comp, dims, vocab_size=2, seed=0, dtype=check.torch_dtype(precision))
    args = tuple(example[name].to("meta") for name in comp.input_names)
    with torch.no_grad(), export_context(graph), trace._quiet():
        program = torch.export.export(graph, args, dynamic_shapes=trace.dynamic_shapes(graph, comp), strict=False)
        onnx_program = torch.onnx.export(program, args, dynamo=True, opset_version=opset, optimize=False,
                                         input_names=list(comp.input_names), output_names=list(comp.output_names))
    wanted = {value.name: value for value in onnx_program.model.graph.initializers.values()}
    onnx_program.save(path, include_initializers=False)
    del onnx_program, program
    placed = _stream(src.weights(comp.source), wanted, prefix, path)
    _attach(path, wanted, placed)
    trace.name_axes(path, comp, precision)
    if residuals is not None:  # traced with ControlNet residual inputs, stored without (sdrt.residual_graph)
        residual_graph.strip(path, residuals)
    exported_s = time.perf_counter() - started
    entry = {
        "file": f"{comp.name}/model.onnx", "external_data": True, "precision": precision,
        "sha256": component_sha256([path, path.with_name(path.name + ".data")]),
        "bytes": component_bytes([path, path.with_name(path.name + ".data")]),
        "precision_note": note, "export_seconds": round(exported_s, 1),
        "streamed": True,
        "check": {"passed": None, "skipped": SKIPPED},
    }
    if comp.name in model.family.lora_components:
        entry["weight_map"] = _weight_map(path, placed, prefix)
    return entry


def _stream(weights: Any, wanted: Mapping[str, Any], prefix: str, path: Path) -> dict[str, dict[str, Any]]:
    """Write every initializer the graph needs into path.data, in its declared dtype: the source's
    parameters as they stream by, then the graph's own constants (buffers traced with their values)."""
    import numpy as np

    placed: dict[str, dict[str, Any]] = {}
    data = path.with_name(path.name + ".data")
    with open(data, "wb") as out:
        def write(name: str, tensor: Any) -> None:
            value = wanted[name]
            dtype = DTYPES[int(value.dtype)][1]
            array = np.ascontiguousarray(tensor.detach().cpu().numpy().astype(dtype, copy=False))
            shape = tuple(int(d) for d in value.shape)
            if tuple(array.shape) != shape:
                raise SdrtError(f"{path.parent.name}: weight {name} has shape {tuple(array.shape)}, the traced graph "
                                f"wants {shape}: the weights do not fit the config")
            out.write(b"\0" * (-out.tell() % ALIGN))
            placed[name] = {"offset": out.tell(), "length": array.nbytes, "dtype": dtype, "shape": list(shape),
                            "parameter": name[len(prefix):]}
            out.write(array.tobytes())

        for parameter, tensor in weights:
            name = prefix + parameter
            if name in wanted and name not in placed:
                write(name, tensor)
        for name, value in wanted.items():  # buffers the trace kept with their values (position ids, ...)
            raw = getattr(value.const_value, "raw", None)
            if name not in placed and raw is not None and raw.device.type != "meta":
                write(name, raw)
    missing = [name for name in wanted if name not in placed]
    if missing:
        raise SdrtError(f"{path.parent.name}: the weights have no {missing[0][len(prefix):]} ({len(missing)} tensors "
                        f"the graph needs are missing): the folder's weights do not match its config")
    return placed


def _attach(path: Path, wanted: Mapping[str, Any], placed: Mapping[str, dict[str, Any]]) -> None:
    """Add the initializers to model.onnx as external data in model.onnx.data."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for name, where in placed.items():
        tensor = onnx.TensorProto(name=name, data_type=int(wanted[name].dtype), dims=where["shape"])
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", path.name + ".data"), ("offset", where["offset"]), ("length", where["length"])):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        model.graph.initializer.append(tensor)
    onnx.save(model, str(path))


def _weight_map(path: Path, placed: Mapping[str, dict[str, Any]], prefix: str) -> str:
    """The weight map (sdrt.weight_map's format) from where the streamed tensors went: each parameter is
    its own initializer, untransposed (the graph is not constant-folded)."""
    parameters = {where["parameter"]: [{"initializer": name, "layout": "identity", "shape": where["shape"],
                                        "dtype": where["dtype"], "parameter_shape": where["shape"],
                                        "file": path.name + ".data", "offset": where["offset"],
                                        "length": where["length"]}]
                  for name, where in placed.items() if name.startswith(prefix)}
    data = {"format": FORMAT, "version": VERSION, "prefix": prefix, "parameters": parameters, "unused": {},
            "unmapped": []}
    (path.parent / FILE_NAME).write_text(json.dumps(data, indent=1) + "\n")
    return f"{path.parent.name}/{FILE_NAME}"
