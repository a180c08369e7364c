"""LoRA side paths for ONNX Runtime on quantized components: ``+ (x @ A) @ B`` beside each int8 layer.

A quantized component (`sdrt quantize`) cannot take a merged LoRA: its weights are int8, and merging
would mean quantizing again. As OpenVINO's side paths do (sdrt.engines.openvino_lora), the graph is
rewritten once: after every MatMul and 1x1 Conv whose weight a LoRA may target (found under its
quantized name, through its DequantizeLinear), a float branch ``(x @ A) @ B`` is added to the layer's
output, with ``A`` ``[in, r]`` and ``B`` ``[r, out]`` new graph inputs of dynamic rank. The branched
graph is written once per component content (``engines/<backend>/lora-branches-<key>/``: the graph,
its weights linked in, `branches.json` last), and a switch binds new A/B arrays to the same session:
no merge, no re-quantization, no new session. A layer no LoRA touches gets rank-1 zeros.

``x`` is the float activation the layer's input was quantized from; the branch runs in float32 and adds
the same function as the merged weight ``W + A @ B`` would, without W's int8 rounding touching the LoRA's part.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from sdrt import atomic
from sdrt.engines.openvino_lora import A_PREFIX, B_PREFIX, QUANTIZED_SUFFIX, Branch, branch_tensors

BRANCHES_FILE = "branches.json"

__all__ = ["branched_model", "branch_tensors", "A_PREFIX", "B_PREFIX"]


def _weight_reader(graph: Any) -> dict[str, tuple[Any, int]]:
    """Stored weight name -> (the MatMul or Conv reading it, through a DequantizeLinear or directly; input index)."""
    users: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            users.setdefault(name, []).append((node, i))
    found = {}
    for init in graph.initializer:
        readers = users.get(init.name, [])
        if len(readers) == 1 and readers[0][0].op_type == "DequantizeLinear" and readers[0][1] == 0:
            readers = users.get(readers[0][0].output[0], [])
        if len(readers) == 1 and readers[0][0].op_type in ("MatMul", "Gemm", "Conv"):
            found[init.name] = readers[0]
    return found


def _float_input(producers: dict[str, Any], name: str) -> str:
    """The float tensor a layer's input was quantized from (x of x -> QuantizeLinear -> DequantizeLinear),
    else the input itself: the branch reads it so the DequantizeLinear keeps its one reader (ONNX Runtime
    fuses DQ -> Conv/MatMul -> Q into its int8 kernels only then)."""
    dq = producers.get(name)
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = producers.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return q.input[0]
    return name


def _branch(graph: Any, node: Any, index: int, dims: list[int], name: str, x: str):
    """The nodes of one side path (or None where the layer is not a plain Linear / 1x1 Conv)."""
    from onnx import helper

    conv = node.op_type == "Conv"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in attrs.items()}
    if index != 1 or (conv and (len(dims) != 4 or dims[2:] != [1, 1])) or (not conv and len(dims) != 2):
        return None
    if conv and any(v not in (0, 1) for k in ("strides", "pads", "dilations", "group") for v in attrs.get(k, [])):
        return None
    if node.op_type == "Gemm" and (attrs.get("transA", [0])[0] or attrs.get("alpha", [1])[0] != 1):
        return None
    trans_b = node.op_type == "Gemm" and attrs.get("transB", [0])[0]  # Gemm: the exporter's 2-D Linear, W^T
    branch = Branch(dims[1], dims[0]) if conv or trans_b else Branch(dims[0], dims[1])
    a, b, p = A_PREFIX + name, B_PREFIX + name, f"lora_branch::{name}"
    out = node.output[0]
    base = p + "::base"
    node.output[0] = base
    nodes = []
    if conv:  # NCHW -> NHWC, the two MatMuls over channels, back
        nodes.append(helper.make_node("Transpose", [x], [p + "::x"], name=p + "::nhwc", perm=[0, 2, 3, 1]))
        x = p + "::x"
    nodes += [helper.make_node("MatMul", [x, a], [p + "::xa"], name=p + "::a"),
              helper.make_node("MatMul", [p + "::xa", b], [p + "::delta"], name=p + "::b")]
    delta = p + "::delta"
    if conv:
        nodes.append(helper.make_node("Transpose", [delta], [p + "::delta_nchw"], name=p + "::nchw", perm=[0, 3, 1, 2]))
        delta = p + "::delta_nchw"
    nodes.append(helper.make_node("Add", [base, delta], [out], name=p + "::add"))
    inputs = [helper.make_tensor_value_info(a, 1, [branch.n_in, f"r_{len(graph.input)}"]),
              helper.make_tensor_value_info(b, 1, [f"r_{len(graph.input)}", branch.n_out])]
    return branch, nodes, inputs


def add_branches(model: Any, targets: Iterable[str]) -> dict[str, Branch]:
    """Add a side path to `model` (an onnx ModelProto, weights external or not) for every target
    initializer (float name) read by a MatMul, a Gemm (kept float by sdrt quantize) or a 1x1 Conv;
    initializer -> its branch."""
    graph = model.graph
    readers = _weight_reader(graph)
    dims = {init.name: list(init.dims) for init in graph.initializer}
    position = {id(node): i for i, node in enumerate(graph.node)}
    producers = {out: node for node in graph.node for out in node.output}
    branches, after = {}, {}
    for name in sorted(targets):
        stored = name + QUANTIZED_SUFFIX if name + QUANTIZED_SUFFIX in readers else name
        if stored not in readers:
            continue
        node, index = readers[stored]
        made = _branch(graph, node, index, dims[stored], name, _float_input(producers, node.input[0]))
        if made is None:
            continue
        branch, nodes, inputs = made
        graph.input.extend(inputs)
        after.setdefault(position[id(node)], []).extend(nodes)
        branches[name] = branch
    ordered = []
    for i, node in enumerate(graph.node):
        ordered.append(node)
        ordered.extend(after.get(i, []))
    del graph.node[:]
    graph.node.extend(ordered)
    return branches


def branched_model(path: Path, content_hash: str, targets: frozenset[str],
                   cache_dir: Path) -> tuple[Path, dict[str, Branch]]:
    """(the branched graph of `path`, initializer -> branch), written once under `cache_dir`."""
    import onnx

    key = hashlib.sha256("|".join([content_hash, onnx.__version__, *sorted(targets)]).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / f"lora-branches-{key}"
    if not (folder / BRANCHES_FILE).is_file():
        model = onnx.load(str(path), load_external_data=False)
        branches = add_branches(model, targets)
        with atomic.staged_folder(folder, if_exists="keep") as tmp:
            locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
            for location in locations:  # the weights stay in the component's file, linked in
                from sdrt.engines.ort_tuning import _link_or_copy

                _link_or_copy(path.parent / location, tmp / location)
            onnx.save(model, str(tmp / path.name))
            (tmp / BRANCHES_FILE).write_text(json.dumps({k: [b.n_in, b.n_out] for k, b in branches.items()}))
    recorded = json.loads((folder / BRANCHES_FILE).read_text())
    return folder / path.name, {k: Branch(*v) for k, v in recorded.items()}


def _engine_class():
    from sdrt.engines.ort_engine import OrtEngine, import_ort

    class OrtBranchedEngine(OrtEngine):
        """An OrtEngine whose session has LoRA side paths: the A/B inputs bound beside the component's own,
        rebound (not rebuilt) on every switch."""

        def __init__(self, *args: Any, factors: dict, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.factors = factors  # input name -> array (kept alive: the bound OrtValues wrap them)
            self._factor_values: dict[str, Any] = {}

        def prepare(self, dims) -> None:
            fresh = self.dims != self.full_dims(dims)
            super().prepare(dims)
            if fresh:
                self._bind_factors()

        def set_factors(self, factors: dict) -> None:
            self.factors = factors
            if self._binding is not None:
                self._bind_factors()

        def _bind_factors(self) -> None:
            ort = import_ort()
            self._factor_values = {name: ort.OrtValue.ortvalue_from_numpy(array, "cpu", 0)
                                   for name, array in self.factors.items()}
            for name, value in self._factor_values.items():
                self._binding.bind_ortvalue_input(name, value)

    return OrtBranchedEngine


def branched_engine(session: Any, manifest: Any, component: str, factors: dict, **kwargs: Any) -> Any:
    """The engine on a branched session (sdrt.engines.ort builds the session)."""
    return _engine_class()(session, component, manifest.values, manifest.precision(component),
                           component_spec=manifest.spec.component(component), factors=factors, **kwargs)
