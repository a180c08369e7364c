"""Building the weight map (`<component>/weight_map.json`, format in sdrt.weight_map) at export time.

The dynamo exporter keeps the names of parameters it uses as they are (Conv weights, Gemm weights:
``unet.conv_in.weight``) but folds the transpose in front of a MatMul into a new, anonymous
initializer (``val_93`` = ``to_q.weight``.T). The runtime merges LoRA deltas in numpy, so it must
know, without torch, where each parameter went and in which layout. This module finds out at
export time, by value: every parameter of the component (in the graph's precision) is compared,
bit for bit, with every initializer as it is and, for matrices, transposed. A name match wins
over a value match; a value shared by several parameters and matching none by name (a LayerNorm's
ones) is left out rather than guessed.

For each mapped initializer the map also records where its bytes lie in the ONNX files (file,
offset, length, dtype, shape), so the runtime memory-maps the base weights instead of parsing the
protobuf: `raw_data_offsets` walks the protobuf wire format of model.onnx for the initializers
stored inline; external-data initializers carry their location, offset and length already.
Every record is read back through its offsets and compared with the parameter before it is written.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from sdrt.errors import SdrtError
from sdrt.weight_map import FILE_NAME, FORMAT, VERSION, read_record

#: ONNX TensorProto data types the runtime can memory-map
ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


# -- the protobuf walk: byte offsets of inline initializers ------------------------------------
def _varint(buf: Any, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield field, pos, pos + length
            pos += length
        else:
            raise SdrtError(f"unexpected protobuf wire type {wire}: the ONNX file is not one the exporter wrote")


def raw_data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """initializer name -> (offset, length) of its inline raw_data in the ONNX file at `path`."""
    found: dict[str, tuple[int, int]] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for field, g0, g1 in _fields(buf, 0, len(buf)):
            if field != 7:  # ModelProto.graph
                continue
            for gfield, t0, t1 in _fields(buf, g0, g1):
                if gfield != 5:  # GraphProto.initializer
                    continue
                name, raw = None, None
                for tfield, a, b in _fields(buf, t0, t1):
                    if tfield == 8:  # TensorProto.name
                        name = bytes(buf[a:b]).decode()
                    elif tfield == 9:  # TensorProto.raw_data
                        raw = (a, b - a)
                if name is not None and raw is not None:
                    found[name] = raw
    return found


# -- matching parameters with initializers -------------------------------------------------
def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest() + f"{array.dtype}{array.shape}"


def _locations(model: Any, path: Path) -> dict[str, dict[str, Any]]:
    """initializer name -> where its bytes are (file relative to the component folder, offset, length)."""
    inline = raw_data_offsets(path)
    where: dict[str, dict[str, Any]] = {}
    for init in model.graph.initializer:
        if init.data_type not in ONNX_DTYPES:
            continue
        if init.data_location == 1:  # EXTERNAL
            info = {e.key: e.value for e in init.external_data}
            if "location" not in info:
                continue
            where[init.name] = {"file": info["location"], "offset": int(info.get("offset", 0)),
                                "length": int(info.get("length", 0))}
        elif init.name in inline:
            offset, length = inline[init.name]
            where[init.name] = {"file": path.name, "offset": offset, "length": length}
    return where


def unused_parameters(module: Any, names: list[str], run: Callable[[], Any]) -> list[str]:
    """Those of `names` that no output of `run()` depends on (autograd finds no path to them).

    The SDXL text encoders' graphs end at a hidden layer (hidden_states[-2]), so the last layer
    is not in the ONNX file at all: a LoRA on it changes nothing, in diffusers as here. Gradients
    are enabled for `names` only, so the pass records little beyond what reaches them.
    """
    import torch

    params = dict(module.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    wanted = [params[name] for name in names]
    try:
        for p in params.values():
            p.requires_grad_(False)
        for p in wanted:
            p.requires_grad_(True)
        with torch.enable_grad():
            outputs = run()
            outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            ends = [o.float().sum() for o in outputs if torch.is_tensor(o) and o.requires_grad]
            grads = (torch.autograd.grad(ends, wanted, allow_unused=True) if ends else [None] * len(wanted))
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])
    return [name for name, grad in zip(names, grads) if grad is None]


def build(module: Any, prefix: str, path: Path, run: Callable[[], Any] | None = None) -> dict[str, Any]:
    """The weight map of `module` (the torch module traced into `path`, in the graph's precision).

    `prefix` is the wrapper's attribute path in front of the module's own parameter names
    ("unet." for UNetGraph), which the dynamo exporter keeps in initializer names. `run` calls the
    traced graph on its example inputs: with it, parameters that match no initializer are split
    into `unused` (no output depends on them: a LoRA there has no effect) and `unmapped` (folded
    into other values by the exporter: a LoRA there is refused).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    where = _locations(model, path)
    by_name: dict[str, np.ndarray] = {}
    by_value: dict[str, list[str]] = {}
    for init in model.graph.initializer:
        if init.name not in where:
            continue
        array = numpy_helper.to_array(init, base_dir=str(path.parent))
        by_name[init.name] = array
        by_value.setdefault(_digest(array), []).append(init.name)

    parameters: dict[str, list[dict[str, Any]]] = {}
    unmapped: list[str] = []
    params = list(module.named_parameters())
    value_count: dict[str, int] = {}
    arrays = {}
    for name, param in params:
        array = param.detach().cpu().numpy()
        arrays[name] = array
        value_count[_digest(array)] = value_count.get(_digest(array), 0) + 1
    for name, array in arrays.items():
        records = []
        own = prefix + name
        if own in by_name and by_name[own].shape == array.shape and np.array_equal(by_name[own], array):
            records.append(_record(own, "identity", array, by_name[own], where[own]))
        elif value_count[_digest(array)] == 1:
            candidates = [(n, "identity") for n in by_value.get(_digest(array), [])]
            if array.ndim == 2:
                candidates += [(n, "transpose") for n in by_value.get(_digest(array.T), [])]
            for init_name, layout in candidates:
                records.append(_record(init_name, layout, array, by_name[init_name], where[init_name]))
        if records:
            parameters[name] = records
        else:
            unmapped.append(name)
    unused = unused_parameters(module, unmapped, run) if run is not None and unmapped else []
    data = {"format": FORMAT, "version": VERSION, "prefix": prefix, "parameters": parameters,
            "unused": {name: list(arrays[name].shape) for name in unused},
            "unmapped": [name for name in unmapped if name not in unused]}
    verify(data, path.parent, arrays)
    return data


def _record(init_name: str, layout: str, param: np.ndarray, init: np.ndarray, where: dict[str, Any]) -> dict:
    return {"initializer": init_name, "layout": layout, "shape": list(init.shape), "dtype": str(init.dtype),
            "parameter_shape": list(param.shape), **where}


def verify(data: dict[str, Any], folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """Read every record back through its offsets: it must equal the parameter in its layout."""
    for name, records in data["parameters"].items():
        for record in records:
            value = read_record(folder, record)
            expected = arrays[name].T if record["layout"] == "transpose" else arrays[name]
            if not np.array_equal(value, expected):
                raise SdrtError(f"weight map: initializer {record['initializer']} read back from "
                                f"{record['file']} differs from parameter {name}: an exporter change the map "
                                f"does not know; report it")


def write(module: Any, prefix: str, path: Path, run: Callable[[], Any] | None = None) -> str:
    """Build and write `<component folder>/weight_map.json`; returns its path relative to the export folder."""
    data = build(module, prefix, path, run)
    out = path.parent / FILE_NAME
    out.write_text(json.dumps(data, indent=1) + "\n")
    return f"{path.parent.name}/{FILE_NAME}"
