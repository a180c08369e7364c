"""The UNet graph that takes an IP-Adapter's keys and values, made from the exported one without re-export.

The exported UNet (torch's dynamo exporter, opset 23) computes each attention as one ONNX
``Attention`` node on head-split tensors, and every node carries the PyTorch module it came from
(``pkg.torch.onnx.name_scopes``). `add_ip_inputs` finds the cross-attention ones (module
``...attn2``), orders them as diffusers' ``attn_processors`` (the order of an IP-Adapter file's
layers: `sdrt.spec.ip_adapter`) and gives layer k two inputs, ``ip_key_<k>`` and ``ip_value_<k>``
([B, tokens, width]); its attention becomes what diffusers' ``IPAdapterAttnProcessor2_0`` computes::

    Attention(q, k, v) + softmax(q split_heads(ip_key_k)^T * scale) split_heads(ip_value_k)

on the same head-split query (the heads split with the query's own shape tensor when the exporter
made one that fits), with the Attention's scale; the IP part is MatMul / Softmax nodes (TensorRT-RTX's
builder crashes on a second Attention node sharing the query). The IP-Adapter's scale is already in
the values (`sdrt.runtime.ip_adapter`). The base export is unchanged; the rewritten graph is
written once under ``engines/graphs/`` like the ControlNet one (`sdrt.residual_graph.derived_graph`),
and composes with it (ControlNet residual inputs and IP-Adapter inputs in one UNet).
Needs the `onnx` package, imported here only.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.manifest import Manifest
from sdrt.residual_graph import _ELEM_TYPES, _onnx, derived_graph, link_weights
from sdrt.spec.ip_adapter import ip_key, ip_value, layer_width, processor_order

#: changes when the rewrite changes (part of every key derived from it)
REWRITE_VERSION = "ip-adapter-inputs-3"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def _module_of(node: Any) -> str | None:
    """The UNet module an exported node came from (``down_blocks.0.attentions.0...attn2``), if recorded."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            modules = [s for s in scopes if isinstance(s, str) and s.split(".")[-1] in ("attn1", "attn2")]
            if modules:
                name = modules[-1]
                return name.split(".", 1)[1] if name.startswith("unet.") else name
    return None


def cross_attentions(graph: Any) -> list[tuple[str, Any]]:
    """(module, Attention node) of every cross-attention of the graph, in diffusers' processor order."""
    found = []
    for node in graph.node:
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
            module = _module_of(node)
            if module is not None and module.endswith("attn2"):
                found.append((module, node))
    return sorted(found, key=lambda pair: processor_order(pair[0]))


def _head_split_shape(graph: Any, producers: dict[str, Any], query: str) -> str | None:
    """The shape tensor the exporter split the query's heads with, when it is ``[B, -1, heads, head_dim]``
    (the key's length is free: the image tokens can use it too); else None. Reusing it keeps the
    IP-Adapter's head split the exporter's own pattern (TensorRT-RTX builds it)."""
    from onnx import numpy_helper

    transpose = producers.get(query)
    reshape = producers.get(transpose.input[0]) if transpose is not None and transpose.op_type == "Transpose" else None
    if reshape is None or reshape.op_type != "Reshape":
        return None
    concat = producers.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
        return None
    constants = {i.name: i for i in graph.initializer}
    length = constants.get(concat.input[1])
    if length is None or numpy_helper.to_array(length).reshape(-1).tolist() != [-1]:
        return None
    return reshape.input[1]


def _attention(graph: Any, node: Any, query: str, key: str, value: str, p: str, *, elem: int) -> list[Any]:
    """``softmax(q k^T * scale) v`` into ``<p>_image``, as MatMul / Softmax nodes (the `node`'s scale
    attribute, else 1/sqrt(head_dim) from the query's shape). Not a second ``Attention`` node: the
    TensorRT-RTX builder crashes on one that shares its query."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Transpose", [key], [p + "_key_t"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", [query, p + "_key_t"], [p + "_scores"])]
    scale = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "scale"), None)
    if scale is not None:
        import numpy as np
        from onnx import numpy_helper

        graph.initializer.append(numpy_helper.from_array(
            np.array(scale, dtype=helper.tensor_dtype_to_np_dtype(elem)), p + "_scale"))
    else:
        nodes += [helper.make_node("Shape", [query], [p + "_qdims"], start=3, end=4),
                  helper.make_node("Cast", [p + "_qdims"], [p + "_headdim_f"], to=TensorProto.FLOAT),
                  helper.make_node("Sqrt", [p + "_headdim_f"], [p + "_root"]),
                  helper.make_node("Reciprocal", [p + "_root"], [p + "_scale_f"]),
                  helper.make_node("Cast", [p + "_scale_f"], [p + "_scale"], to=elem)]
    return nodes + [helper.make_node("Mul", [p + "_scores", p + "_scale"], [p + "_scaled"]),
                    helper.make_node("Softmax", [p + "_scaled"], [p + "_weights"], axis=-1),
                    helper.make_node("MatMul", [p + "_weights", value], [p + "_image"])]


def add_ip_inputs(path: Path, out: Path, layout: spec.IPAdapterLayout, precision: str,
                  block_out_channels: list[int]) -> None:
    """Write `out`: the UNet graph at `path` with the IP-Adapter inputs and branches (module docstring);
    external weights are linked next to `out`, not copied."""
    onnx = _onnx()
    from onnx import helper, numpy_helper

    import numpy as np

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    layers = cross_attentions(graph)
    if not layers:
        raise SdrtError(f"{path} has no cross-attention Attention nodes with their module names (exported by an older "
                        f"sdrt or the torchscript exporter): export the model again with this sdrt's defaults to use "
                        f"an IP-Adapter")
    if len(layers) != len(layout.widths):
        raise SdrtError(f"the IP-Adapter has {len(layout.widths)} cross-attention layers, the UNet has {len(layers)}: "
                        f"use an IP-Adapter made for this base")
    widths = [layer_width(module, block_out_channels) for module, _ in layers]
    if widths != list(layout.widths):
        raise SdrtError(f"the IP-Adapter's layer widths {list(layout.widths)} differ from the UNet's {widths}: use an "
                        f"IP-Adapter made for this base")
    graph.initializer.extend([numpy_helper.from_array(np.array(v, dtype=np.int64), name) for name, v in (
        ("sdrt_ip_keep_batch", [0]), ("sdrt_ip_any", [-1]), ("sdrt_ip_1", [1]), ("sdrt_ip_2", [2]),
        ("sdrt_ip_3", [3]), ("sdrt_ip_4", [4]))])
    added: dict[int, list[Any]] = {}
    producers = {out: n for n in graph.node for out in n.output}
    for k, (module, node) in enumerate(layers):
        p = f"sdrt_ip_{k}"
        query, text_out = node.input[0], node.output[0]
        split = _head_split_shape(graph, producers, query)
        nodes = []
        if split is None:  # the head split computed from the query's shape: [B, -1, heads, head_dim]
            split = p + "_split"
            nodes = [
                helper.make_node("Shape", [query], [p + "_qshape"]),
                helper.make_node("Slice", [p + "_qshape", "sdrt_ip_1", "sdrt_ip_2"], [p + "_heads"]),
                helper.make_node("Slice", [p + "_qshape", "sdrt_ip_3", "sdrt_ip_4"], [p + "_headdim"]),
                helper.make_node("Concat", ["sdrt_ip_keep_batch", "sdrt_ip_any", p + "_heads", p + "_headdim"],
                                 [split], axis=0),
            ]
        heads = []
        for name in (ip_key(k), ip_value(k)):
            nodes += [helper.make_node("Reshape", [name, split], [f"{p}_{name}_rows"]),
                      helper.make_node("Transpose", [f"{p}_{name}_rows"], [f"{p}_{name}_heads"], perm=[0, 2, 1, 3])]
            heads.append(f"{p}_{name}_heads")
        node.output[0] = p + "_text"
        nodes += _attention(graph, node, query, *heads, p, elem=_ELEM_TYPES[precision])
        nodes.append(helper.make_node("Add", [p + "_text", p + "_image"], [text_out], name=f"{p}_sum"))
        added[id(node)] = nodes
    ordered = []
    for node in graph.node:
        ordered.append(node)
        ordered.extend(added.get(id(node), ()))
    del graph.node[:]
    graph.node.extend(ordered)
    elem = _ELEM_TYPES[precision]
    for tensor in layout.unet_tensors():
        graph.input.append(helper.make_tensor_value_info(tensor.name, elem, ["B", layout.tokens, tensor.shape[2]]))
    link_weights(model, path, out)
    onnx.save(model, str(out))


def ip_manifest(manifest: Manifest, layout: spec.IPAdapterLayout) -> Manifest:
    """The manifest of `manifest`'s model (plain, or already taking ControlNet residuals) with a UNet that takes
    this IP-Adapter layout's keys and values (see the module docstring)."""
    if manifest.pipeline.get("ip_adapter_inputs") == layout.to_json():
        return manifest
    if manifest.pipeline.get("ip_adapter_inputs"):
        raise SdrtError("the pipeline's UNet already takes another IP-Adapter layout: load the model again")
    family = manifest.family_spec
    if not family.controlnet or family.denoiser != "unet":
        raise SdrtError(f"{manifest.folder} is an {family.title} model: sdrt's IP-Adapter support covers UNet models "
                        f"(SD 1.x/2.x, SDXL)")
    config_path = manifest.folder / family.denoiser / "config.json"
    try:
        block_out_channels = [int(c) for c in json.loads(config_path.read_text())["block_out_channels"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SdrtError(f"{config_path} is missing or unreadable ({e}): export the model again with --force") from None
    version = f"{REWRITE_VERSION}|{json.dumps(layout.to_json(), sort_keys=True)}"
    return derived_graph(manifest, "ip", version, {"ip_adapter_inputs": layout.to_json()},
                         lambda source, out, derived, denoiser: add_ip_inputs(
                             source, out, layout, manifest.precision(denoiser), block_out_channels))
