"""The UNet graph that takes ControlNet residuals, made from the exported one without re-export.

Export traces the UNet *with* residual inputs (so the graph has an ``Add(skip, residual)`` where
diffusers adds each one), then `strip` turns every such Add into an ``Identity(skip)`` and drops the
residual inputs: the graph in the folder is exactly the plain UNet (ONNX Runtime, OpenVINO and
TensorRT remove the Identities; no cost without a ControlNet), and its metadata
(``sdrt.residuals``) names the Identity of each residual. `add_inputs` undoes it: the Identities
become Adds again and the residual inputs come back, with the spec's names, dtypes and symbolic
dims. Export checks that rewritten graph against PyTorch (with random residuals), so what a
ControlNet runs on is what was checked.

`residual_manifest(manifest)` gives the manifest of the residual-taking model: the rewritten UNet
written once under ``engines/graphs/unet-residuals-<key>/`` (keyed by the UNet's content hash; its
external weights hard-linked, never copied; inline weights are copied with the graph), the
manifest's `pipeline.residual_inputs` set (so its spec has the residual inputs) and the UNet's
`sha256` replaced by a key derived from the exported one (every engine cache is keyed by it; the
exported one stays as `exported_sha256`, what the model hash in PNG metadata reads).
Needs the `onnx` package, imported here only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from sdrt import atomic, spec
from sdrt.errors import SdrtError
from sdrt.manifest import Manifest

#: the metadata key of a stripped graph: residual input name -> the Identity output that held its Add
METADATA_KEY = "sdrt.residuals"
#: changes when the rewrite changes (part of every key derived from it)
REWRITE_VERSION = "residual-inputs-1"
#: ONNX element type of each precision's float
_ELEM_TYPES = {"fp32": 1, "fp16": 10}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        raise SdrtError(f"ControlNet needs the onnx package to add residual inputs to the UNet graph ({e}): "
                        f"pip install onnx") from None
    return onnx


def _metadata(model: Any) -> dict[str, str] | None:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None


def strip(path: Path, residuals: spec.Residuals) -> None:
    """Turn the Add that consumes each residual input into an Identity of its other operand, drop the
    inputs, record which Identity held which residual (`path` rewritten in place, weights untouched).

    The exporter may read a size from a residual input anywhere in the graph (torch.export gives equal
    sizes one symbol, read from the first input that has it); such a ``Shape`` is computed from
    ``sample``'s shape instead (``[B, channels, ceil(h/k), ceil(w/k)]``), at the top of the graph."""
    onnx = _onnx()
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    marks: dict[str, str] = {}
    head: list[Any] = []
    for index, (name, (channels, factor)) in enumerate(zip(residuals.names, (*residuals.down, residuals.mid))):
        users = [n for n in graph.node if name in n.input]
        adds = [n for n in users if n.op_type == "Add" and len(n.input) == 2]
        if len(adds) != 1 or any(n.op_type not in ("Add", "Shape") for n in users):
            kinds = ", ".join(n.op_type for n in users) or "nothing"
            raise SdrtError(f"unet export failed: the residual input {name} feeds {kinds}, not one Add: "
                            f"this diffusers version adds ControlNet residuals differently; please report it")
        node = adds[0]
        other = node.input[1] if node.input[0] == name else node.input[0]
        shapes = [n for n in users if n.op_type == "Shape"]
        if shapes:
            full = _residual_shape(graph, head, f"sdrt_residual_{index}", channels, factor)
            for shape in shapes:
                _shape_to_slice(graph, shape, full)
        node.op_type = "Identity"
        del node.input[:]
        node.input.append(other)
        del node.attribute[:]
        marks[name] = node.output[0]
    if head:
        nodes = head + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    kept = [i for i in graph.input if i.name not in marks]
    del graph.input[:]
    graph.input.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(marks)
    onnx.save(model, str(path))


def _constant(graph: Any, name: str, values: list[int]) -> str:
    import numpy as np
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


def _residual_shape(graph: Any, head: list[Any], prefix: str, channels: int, factor: int) -> str:
    """Nodes (appended to `head`) computing a residual's shape from sample's; the name of the result."""
    from onnx import helper

    shape, batch, sides = f"{prefix}_sample_shape", f"{prefix}_batch", f"{prefix}_sides"
    head.append(helper.make_node("Shape", [spec.N.SAMPLE], [shape]))
    head.append(helper.make_node("Slice", [shape, _constant(graph, f"{prefix}_0", [0]),
                                           _constant(graph, f"{prefix}_1", [1])], [batch]))
    head.append(helper.make_node("Slice", [shape, _constant(graph, f"{prefix}_2", [2]),
                                           _constant(graph, f"{prefix}_4", [4])], [sides]))
    if factor > 1:  # ceil(side / factor), as the stride-2 convolutions round
        head.append(helper.make_node("Add", [sides, _constant(graph, f"{prefix}_round", [factor - 1])],
                                     [f"{prefix}_padded"]))
        head.append(helper.make_node("Div", [f"{prefix}_padded", _constant(graph, f"{prefix}_factor", [factor])],
                                     [f"{prefix}_scaled"]))
        sides = f"{prefix}_scaled"
    full = f"{prefix}_shape"
    head.append(helper.make_node("Concat", [batch, _constant(graph, f"{prefix}_channels", [channels]), sides],
                                 [full], axis=0))
    return full


def _shape_to_slice(graph: Any, node: Any, full: str) -> None:
    """``Shape(residual, start, end)`` -> ``Slice(full, start, end)``: the same values."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    start, end = int(attrs.get("start", 0)), int(attrs.get("end", 4))
    out = node.output[0]
    node.op_type = "Slice"
    del node.attribute[:]
    del node.input[:]
    node.input.extend([full, _constant(graph, f"{out}_start", [start]), _constant(graph, f"{out}_end", [end])])


def marked(path: Path) -> bool:
    """Whether the graph at `path` was stripped by this module (a ControlNet can be added to it)."""
    onnx = _onnx()
    return _metadata(onnx.load(str(path), load_external_data=False)) is not None


def add_inputs(path: Path, out: Path, component: spec.ComponentSpec, precision: str) -> None:
    """Write `out`: the stripped graph at `path` with its residual inputs back (`component`: the spec of
    the residual-taking UNet); external weights are linked next to `out`, not copied."""
    onnx = _onnx()
    model = onnx.load(str(path), load_external_data=False)
    marks = _metadata(model)
    if marks is None:
        raise SdrtError(f"{path} has no ControlNet marks (exported by an older sdrt): export the model again "
                        f"with this sdrt to use ControlNets")
    graph = model.graph
    by_output = {node.output[0]: node for node in graph.node if node.op_type == "Identity"}
    axes = spec.dynamic_axes(component)
    for name, identity in marks.items():
        node = by_output.get(identity)
        if node is None:
            raise SdrtError(f"{path} lacks the node {identity!r} its ControlNet marks name: export the model "
                            f"again with --force")
        node.op_type = "Add"
        node.input.append(name)
        tensor = component.tensor(name)
        dims = [axes.get(name, {}).get(i, d) for i, d in enumerate(tensor.shape)]
        graph.input.append(onnx.helper.make_tensor_value_info(
            name, _ELEM_TYPES[precision], [d if isinstance(d, int) else str(d) for d in dims]))
    props = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    link_weights(model, path, out)
    onnx.save(model, str(out))


def residual_manifest(manifest: Manifest) -> Manifest:
    """The manifest of `manifest`'s model with a UNet that takes ControlNet residuals (see the module
    docstring); the same object when it already takes them. One line when the folder cannot."""
    if manifest.pipeline.get("residual_inputs"):
        return manifest
    family = manifest.family_spec
    if not family.controlnet:
        raise SdrtError(f"{manifest.folder} is an {family.title} model: it takes no ControlNet (families that "
                        f"do: {', '.join(f.name for f in spec.FAMILIES.values() if f.controlnet)})")
    if manifest.residuals is None:
        raise SdrtError(f"{manifest.folder} was exported by an older sdrt (sdrt.json has no pipeline.residuals): "
                        f"export the model again with this sdrt to use ControlNets (`sdrt export --model SRC "
                        f"--out {manifest.folder} --force`)")
    return derived_graph(manifest, "residuals", REWRITE_VERSION, {"residual_inputs": True},
                         lambda source, out, derived, denoiser: add_inputs(
                             source, out, derived.spec.component(denoiser), manifest.precision(denoiser)))


def derived_graph(manifest: Manifest, tag: str, version: str, pipeline: dict[str, Any],
                  write: Callable[[Path, Path, Manifest, str], None]) -> Manifest:
    """The manifest of `manifest`'s model with its denoiser replaced by a rewritten graph: `pipeline` is
    merged into the manifest's pipeline facts (what makes its spec take the new inputs), `write(source,
    out, derived manifest, denoiser)` writes the graph once under ``engines/graphs/<denoiser>-<tag>-<key>/``
    (keyed by the source graph's content hash and `version`; a read-only folder: the user's cache).
    The denoiser's `sha256` becomes that key (every engine cache is keyed by it); the exported one
    stays as `exported_sha256` (what the model hash in PNG metadata reads)."""
    denoiser = manifest.family_spec.denoiser
    source = manifest.onnx_path(denoiser)
    content = manifest.component_hash(denoiser)
    onnx = _onnx()
    key = hashlib.sha256("|".join([content, version, onnx.__version__]).encode()).hexdigest()
    folder = manifest.engines_dir() / "graphs" / f"{denoiser}-{tag}-{key[:16]}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        relative: str | Path = folder.relative_to(manifest.folder)
    except OSError:  # a read-only model folder: the user's cache instead
        folder = Path(os.environ.get("SDRT_CACHE") or Path.home() / ".cache" / "sdrt").expanduser() \
            / "graphs" / folder.name
        relative = folder
    data = copy.deepcopy(manifest.data)
    data["pipeline"].update(pipeline)
    derived = Manifest(manifest.folder, data)
    target = folder / "model.onnx"
    if not target.is_file():
        with atomic.staged_folder(folder, if_exists="keep") as stage:
            write(source, stage / "model.onnx", derived, denoiser)
    entry = data["components"][denoiser]
    entry["file"] = str(Path(relative) / "model.onnx")
    entry["exported_sha256"] = entry.get("exported_sha256") or entry.get("sha256")
    entry["sha256"] = key  # caches: the new graph's key
    entry["bytes"] = sum(p.stat().st_size for p in (target, target.with_name(target.name + ".data")) if p.exists())
    return derived


def link_weights(model: Any, source: Path, out: Path) -> None:
    """Hard-link (else copy) the external weight files `model` (loaded from `source`) names next to `out`."""
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    for location in locations:  # the weights stay where they are
        try:
            os.link(source.parent / location, out.parent / location)
        except OSError:
            shutil.copy2(source.parent / location, out.parent / location)
