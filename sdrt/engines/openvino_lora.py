"""LoRA branches for OpenVINO: the model compiled once with a low-rank side path per LoRA-able layer.

Recompiling a component with merged weights costs a full compile per switch (sd15: ~6 s for the
UNet on 2 cores, 4x a warm-cache load). Instead, as OpenVINO GenAI does with its adapters, the model
is transformed once: after every Linear layer's ``MatMul`` (and every 1x1 ``Convolution``, computed
as two MatMuls over the channels) a branch ``+ (x @ A) @ B`` is added, where ``A`` ``[in, r]`` and
``B`` ``[r, out]`` are new model inputs with a dynamic rank ``r``. The base weights stay the
model's own constants (pre-packed once, never changed); the compiled model is the same for every
LoRA, so it is compiled (or imported from the cache) once, and a switch only binds new ``A``/``B``
tensors to the infer request. Several LoRAs on one layer are concatenated along ``r`` with their
scales folded into ``B``; a layer no LoRA touches gets rank-1 zeros. The branch computes
``x @ W + x @ (A @ B)``: the same function as the merged weight ``W + A @ B``, rounded differently
(within float32 noise; parity tests against diffusers). Unloading goes back to the base model, so
an unloaded pipeline is bit for bit the never-LoRA'd one.

On a quantized component (`sdrt quantize`) the same side path sits beside the int8 layer: the weight is
found under its quantized name and through its dequantization (Convert, Subtract, Multiply), and the
branch adds ``(x @ A) @ B`` in float to the int8 layer's output: the LoRA needs no re-quantization.

Layers whose weight reaches something else (a 3x3 Conv, an embedding Gather, a MatMul with the
weight first) get no branch; a LoRA on them takes the merged-weight path (sdrt.engines.openvino).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

A_PREFIX = "lora_a::"
B_PREFIX = "lora_b::"


@dataclass(frozen=True)
class Branch:
    """One layer's side path: the rows of A (the layer's input width) and columns of B (its output)."""

    n_in: int
    n_out: int


#: what a quantized weight is stored as (`sdrt quantize`: ONNX Runtime's quantizer names the int8 tensor so)
QUANTIZED_SUFFIX = "_quantized"
#: the ops between a stored weight and its layer: an fp16 weight's Convert, or an int8 weight's dequantization
#: (OpenVINO reads ONNX's DequantizeLinear as Convert -> Subtract zero point -> Multiply scale)
DEQUANTIZE_OPS = ("Convert", "Subtract", "Multiply")


def _consumer(constant: Any):
    """(the one op reading the constant, through the Convert of an fp16 weight or the dequantization of an
    int8 one; its port) or None."""
    port = constant.output(0)
    users = list(port.get_target_inputs())
    for _ in DEQUANTIZE_OPS:
        if len(users) != 1 or users[0].get_node().get_type_name() not in DEQUANTIZE_OPS:
            break
        port = users[0].get_node().output(0)
        users = list(port.get_target_inputs())
    if len(users) != 1:
        return None
    return users[0]


def _matmul_branch(ops: Any, node: Any, weight_index: int, shape: list[int]):
    attrs = node.get_attributes()
    if weight_index != 1 or attrs.get("transpose_a") or len(shape) != 2:
        return None
    n_in, n_out = (shape[1], shape[0]) if attrs.get("transpose_b") else (shape[0], shape[1])
    return node.input(0).get_source_output(), Branch(n_in, n_out), False


def _conv_branch(ops: Any, node: Any, weight_index: int, shape: list[int]):
    attrs = node.get_attributes()
    if weight_index != 1 or len(shape) != 4 or shape[2:] != [1, 1]:
        return None
    if list(attrs["strides"]) != [1, 1] or list(attrs["pads_begin"]) != [0, 0] or list(attrs["pads_end"]) != [0, 0]:
        return None
    return node.input(0).get_source_output(), Branch(shape[1], shape[0]), True


def add_branches(ov: Any, model: Any, targets: Iterable[str]) -> dict[str, Branch]:
    """Add a LoRA side path to `model` (an ``ov.Model`` from ``read_model``) for every initializer of
    `targets` that feeds a MatMul or a 1x1 Convolution; initializer name -> its branch."""
    import openvino.opset13 as ops

    constants = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"}
    branches: dict[str, Branch] = {}
    parameters = []
    for name in sorted(targets):
        constant = constants.get(name, constants.get(name + QUANTIZED_SUFFIX))  # a quantized graph's int8 weight
        user = None if constant is None else _consumer(constant)
        if user is None:
            continue
        node = user.get_node()
        shape = [int(d) for d in constant.get_shape()]
        build = {"MatMul": _matmul_branch, "Convolution": _conv_branch}.get(node.get_type_name())
        found = build(ops, node, user.get_index(), shape) if build else None
        if found is None:
            continue
        x, branch, channels_first = found
        if x.get_element_type() != ov.Type.f32:
            continue
        a = ops.parameter(ov.PartialShape([branch.n_in, -1]), ov.Type.f32, name=A_PREFIX + name)
        b = ops.parameter(ov.PartialShape([-1, branch.n_out]), ov.Type.f32, name=B_PREFIX + name)
        if channels_first:  # NCHW -> NHWC, the two MatMuls over channels, back
            x = ops.transpose(x, ops.constant(np.array([0, 2, 3, 1], dtype=np.int64))).output(0)
        delta = ops.matmul(ops.matmul(x, a, False, False), b, False, False).output(0)
        if channels_first:
            delta = ops.transpose(delta, ops.constant(np.array([0, 3, 1, 2], dtype=np.int64))).output(0)
        out = node.output(0)
        readers = list(out.get_target_inputs())
        total = ops.add(out, delta)
        for reader in readers:
            reader.replace_source_output(total.output(0))
        for parameter, tensor_name in ((a, A_PREFIX + name), (b, B_PREFIX + name)):
            parameter.output(0).set_names({tensor_name})
        parameters += [a, b]
        branches[name] = branch
    if parameters:
        model.add_parameters(parameters)
        model.validate_nodes_and_infer_types()
    return branches


def branch_tensors(branches: Mapping[str, Branch], factors: Mapping[str, tuple[np.ndarray, np.ndarray]]
                   ) -> dict[str, np.ndarray]:
    """Input name -> array for every branch: the given (A, B) factors, rank-1 zeros elsewhere."""
    tensors = {}
    for name, branch in branches.items():
        a, b = factors.get(name, (None, None))
        if a is None:
            a = np.zeros((branch.n_in, 1), dtype=np.float32)
            b = np.zeros((1, branch.n_out), dtype=np.float32)
        elif a.shape[0] != branch.n_in or b.shape[1] != branch.n_out:
            raise ValueError(f"LoRA factors for {name}: {a.shape} @ {b.shape}, the layer is {branch.n_in} -> {branch.n_out}")
        tensors[A_PREFIX + name] = np.ascontiguousarray(a, dtype=np.float32)
        tensors[B_PREFIX + name] = np.ascontiguousarray(b, dtype=np.float32)
    return tensors
