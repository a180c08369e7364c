"""Graph rewrites that make an exported SD graph faster on ONNX Runtime's CPU kernels.

Each rewrite keeps the graph's numbers (checked against the original in tests) and targets a
pattern that torch's dynamo exporter (opset 23) emits and ORT runs slowly on the CPU:

- ``attention_to_mha``: ``Reshape -> Transpose -> Attention(4-D) -> Transpose -> Reshape`` becomes
  one ``com.microsoft.MultiHeadAttention`` on the 3-D projections: no transposes, and ORT's
  contrib kernel, which is faster on the CPU than its opset-23 ``Attention``.
- ``group_norm_to_instance_norm``: opset-21 ``GroupNormalization`` (which ORT expands at load into
  about twelve element-wise ops, casts included) becomes
  ``Reshape -> InstanceNormalization -> Reshape -> Mul -> Add``: one native kernel for the
  statistics instead of a chain of memory passes.

They work on the graph alone (``onnx.load(..., load_external_data=False)``); weights stay where
they are.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

MS_DOMAIN = "com.microsoft"


def _consumers(graph: Any) -> dict[str, list[Any]]:
    users: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _static_dims(graph: Any, name: str) -> list[int | None] | None:
    """A tensor's dims from the graph's value_info (None for symbolic ones), or None if unknown."""
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return None


def _initializer_ints(graph: Any, name: str) -> list[int] | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    return None


def _is_head_split(graph: Any, producers: dict, name: str) -> tuple[str, int] | None:
    """``name`` = Transpose(perm 0,2,1,3) of Reshape(x, [.., .., heads, d]): (x, heads)."""
    tr = producers.get(name)
    if tr is None or tr.op_type != "Transpose" or list(_attr(tr, "perm", [])) != [0, 2, 1, 3]:
        return None
    rs = producers.get(tr.input[0])
    if rs is None or rs.op_type != "Reshape":
        return None
    dims = _static_dims(graph, name)
    heads = dims[1] if dims and len(dims) == 4 else None
    if heads is None:
        shape = _initializer_ints(graph, rs.input[1])
        heads = shape[2] if shape and len(shape) == 4 and shape[2] > 0 else None
    return (rs.input[0], heads) if heads else None


def attention_to_mha(model: Any) -> int:
    """Rewrite head-split 4-D Attention into 3-D MultiHeadAttention; returns how many."""
    from onnx import helper

    graph = model.graph
    producers, users = _producers(graph), _consumers(graph)
    new_nodes, dead = [], set()
    for node in graph.node:
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx") or len(node.input) != 3:
            continue
        if _attr(node, "is_causal", 0) or _attr(node, "softcap", 0.0) or len(node.output) != 1:
            continue
        splits = [_is_head_split(graph, producers, name) for name in node.input]
        if any(s is None for s in splits) or len({s[1] for s in splits}) != 1:
            continue
        out_users = users.get(node.output[0], [])
        if len(out_users) != 1 or out_users[0].op_type != "Transpose" or \
                list(_attr(out_users[0], "perm", [])) != [0, 2, 1, 3]:
            continue
        merge_users = users.get(out_users[0].output[0], [])
        if len(merge_users) != 1 or merge_users[0].op_type != "Reshape":
            continue
        merge = merge_users[0]
        attrs = {"num_heads": int(splits[0][1])}
        scale = _attr(node, "scale")
        if scale is not None:
            attrs["scale"] = float(scale)
        new_nodes.append((merge, helper.make_node(
            "MultiHeadAttention", [s[0] for s in splits], [merge.output[0]],
            name=f"{node.name or merge.output[0]}_mha", domain=MS_DOMAIN, **attrs)))
        dead.update(id(n) for n in (node, out_users[0], merge))
    _replace(graph, new_nodes, dead)
    if new_nodes:
        _ensure_opset(model, MS_DOMAIN, 1)
        prune_dead_nodes(graph)
    return len(new_nodes)


def group_norm_to_instance_norm(model: Any) -> int:
    """Rewrite opset-21 GroupNormalization with per-channel scale and bias; returns how many."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, dead, added = [], set(), []
    for node in graph.node:
        if node.op_type != "GroupNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        scale, bias = (inits.get(n) for n in node.input[1:3])
        if scale is None or bias is None or len(scale.dims) != 1:
            continue
        dims = _static_dims(graph, node.input[0])
        if dims is None or len(dims) < 3:
            continue  # the rank decides how scale broadcasts: unknown, leave the node alone
        groups = int(_attr(node, "num_groups"))
        eps = float(_attr(node, "epsilon", 1e-5))
        dtype = helper.tensor_dtype_to_np_dtype(scale.data_type)
        p = (node.name or node.output[0]) + "_in"
        added += [
            numpy_helper.from_array(np.array([0, groups, -1], dtype=np.int64), p + "_grouped"),
            numpy_helper.from_array(np.arange(1, len(dims) - 1, dtype=np.int64), p + "_hw_axes"),
            numpy_helper.from_array(np.ones(groups, dtype=dtype), p + "_ones"),
            numpy_helper.from_array(np.zeros(groups, dtype=dtype), p + "_zeros"),
        ]
        x, y = node.input[0], node.output[0]
        new_nodes.append((node, [
            helper.make_node("Shape", [x], [p + "_shape"], name=p + "_shape"),
            helper.make_node("Reshape", [x, p + "_grouped"], [p + "_x3"], name=p + "_reshape_in"),
            helper.make_node("InstanceNormalization", [p + "_x3", p + "_ones", p + "_zeros"], [p + "_n3"],
                             name=p + "_norm", epsilon=eps),
            helper.make_node("Reshape", [p + "_n3", p + "_shape"], [p + "_n4"], name=p + "_reshape_out"),
            # [C] -> [C, 1, ..]: constant-folded by ORT at load (the weights may live in external data)
            helper.make_node("Unsqueeze", [node.input[1], p + "_hw_axes"], [p + "_scale"], name=p + "_scale_chw"),
            helper.make_node("Unsqueeze", [node.input[2], p + "_hw_axes"], [p + "_bias"], name=p + "_bias_chw"),
            helper.make_node("Mul", [p + "_n4", p + "_scale"], [p + "_scaled"], name=p + "_mul"),
            helper.make_node("Add", [p + "_scaled", p + "_bias"], [y], name=p + "_add"),
        ]))
        dead.add(id(node))
    graph.initializer.extend(added)
    _replace(graph, new_nodes, dead)
    return len(new_nodes)


#: rewrite name -> function; the order they are applied in
REWRITES: dict[str, Callable[[Any], int]] = {
    "attention_to_mha": attention_to_mha,
    "group_norm_to_instance_norm": group_norm_to_instance_norm,
}


def _replace(graph: Any, replacements: list, dead: set[int]) -> None:
    """Put each new node (or list of nodes) where its anchor was; drop the dead ones."""
    by_anchor = {id(anchor): new if isinstance(new, list) else [new] for anchor, new in replacements}
    nodes = []
    for node in graph.node:
        nodes.extend(by_anchor.get(id(node), []))
        if id(node) not in dead:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def prune_dead_nodes(graph: Any) -> int:
    """Remove nodes whose outputs nobody reads (and initializers nobody reads)."""
    outputs = {o.name for o in graph.output}
    removed = 0
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        removed += len(graph.node) - len(keep)
        del graph.node[:]
        graph.node.extend(keep)
    used = {name for node in graph.node for name in node.input}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return removed


def _ensure_opset(model: Any, domain: str, version: int) -> None:
    from onnx import helper

    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))
