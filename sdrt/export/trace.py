"""Trace one wrapped component to an ONNX file whose I/O is exactly the spec's.

Default: torch's dynamo exporter (`torch.export` + `torch.onnx.export(dynamo=True)`) at opset 23,
where it emits native Attention, GroupNormalization and LayerNormalization (faster in ONNX Runtime
than the TorchScript export's decomposed ops). `torchscript` is the older exporter, kept as a
fallback for runtimes that need opset <= 20.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.export.graphs import export_context

#: exporter -> (lowest, highest) opset it can produce here
OPSETS: dict[str, tuple[int, int]] = {"dynamo": (18, 23), "torchscript": (14, 20)}
DEFAULT_OPSET = 23

#: ONNX TensorProto element type of each spec dtype
ONNX_TYPES = {"float32": 1, "float16": 10, "int32": 6}


def check_opset(exporter: str, opset: int) -> None:
    """Fail before any work when the exporter cannot produce the opset."""
    if exporter not in OPSETS:
        raise SdrtError(f"unknown exporter {exporter!r}: choose one of {', '.join(OPSETS)}")
    lo, hi = OPSETS[exporter]
    if not lo <= opset <= hi:
        raise SdrtError(f"the {exporter} exporter cannot produce opset {opset}: choose --opset between {lo} and {hi}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress, warnings and guard logs; the CLI prints its own lines."""
    loggers = [logging.getLogger(n) for n in ("torch._guards", "torch.export", "torch.onnx", "torch._dynamo",
                                              "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_graph(graph: torch.nn.Module, comp: spec.ComponentSpec, example: Mapping[str, torch.Tensor], path: Path,
                 *, opset: int, exporter: str, precision: str) -> None:
    """Write `path` (plus `path`.data when the graph is over 2 GB) and name its dynamic axes."""
    if exporter == "dynamo":
        dynamo_program(graph, comp, example, opset=opset).save(path)  # external data only when over 2 GB
    else:
        args = tuple(example[name] for name in comp.input_names)
        axes = spec.dynamic_axes(comp)
        with torch.no_grad(), export_context(graph), _quiet():
            torch.onnx.export(graph, args, str(path), dynamo=False, opset_version=opset,
                              input_names=list(comp.input_names), output_names=list(comp.output_names),
                              dynamic_axes={n: dict(a) for n, a in axes.items()})
    name_axes(path, comp, precision)


def dynamo_program(graph: torch.nn.Module, comp: spec.ComponentSpec, example: Mapping[str, torch.Tensor], *,
                   opset: int, optimize: bool = True) -> Any:
    """The dynamo exporter's ONNXProgram of the wrapped component (`optimize=False`: no constant folding,
    for a module traced without its weights: sdrt.export.streamed)."""
    args = tuple(example[name] for name in comp.input_names)
    axes = spec.dynamic_axes(comp)
    with torch.no_grad(), export_context(graph), _quiet():
        # one entry per input, in the spec's order; a wrapper taking *inputs gets them as one group
        dynamic = tuple({axis: torch.export.Dim.DYNAMIC for axis in axes[name]} if name in axes else None
                        for name in comp.input_names)
        parameters = inspect.signature(graph.forward).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
            dynamic = (dynamic,)
        program = torch.export.export(graph, args, dynamic_shapes=dynamic, strict=False)
        return torch.onnx.export(program, args, dynamo=True, opset_version=opset, verbose=False,
                                 input_names=list(comp.input_names), output_names=list(comp.output_names),
                                 optimize=optimize)


def name_axes(path: Path, comp: spec.ComponentSpec, precision: str) -> None:
    """Name the graph's dynamic dims by the spec's expressions ("B", "h", "f*h") and check I/O types.

    The exporters call them s0, s1, ...; engines and users read the spec's names. A type that
    differs from the spec (e.g. timestep not float32) is an exporter bug caught here, not at run time.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    component = comp.name
    axes = spec.dynamic_axes(comp)
    graph_values = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    for tensor in comp.tensors:
        value = graph_values.get(tensor.name)
        if value is None:
            if tensor.optional:
                continue
            raise SdrtError(f"exported {component} lacks tensor {tensor.name!r}: the exporter renamed it")
        want = ONNX_TYPES[spec.dtype_of(tensor, precision)]
        if value.type.tensor_type.elem_type != want:
            raise SdrtError(f"exported {component} tensor {tensor.name} has ONNX type "
                            f"{value.type.tensor_type.elem_type}, the spec wants {spec.dtype_of(tensor, precision)}")
        dims = value.type.tensor_type.shape.dim
        for axis, expr in axes.get(tensor.name, {}).items():
            dims[axis].Clear()
            dims[axis].dim_param = expr
    onnx.save(model, str(path))
