"""A LoRA-ready ONNX Runtime graph: optimized once, with the LoRA-able weights kept as plain initializers.

Why: ONNX Runtime cannot change a live session's weights, so every LoRA switch creates new text
encoder and UNet sessions, and creating one optimizes the whole graph again (sd15's UNet: ~20 s of
a 37 s session creation on a 2-core machine, the rest loading weights). The optimization does not
depend on the weights a LoRA changes *if* the optimizer is kept from folding them into anything,
so it can be done once: the weights a LoRA may target (every 2-D MatMul/Gemm weight and 1x1 Conv
weight of the weight map) are declared as graph inputs, which makes them non-constant to the
optimizer (no fusion, pre-packing order or layout change bakes their values in); ONNX Runtime
optimizes that graph at the backend's level and writes it out (`optimized_model_filepath`); the
inputs are removed again, so the saved graph's initializers are the original weights under their
original names. A LoRA session then loads that graph with optimization off and the merged weights
as initializer overrides: measured on sd15's UNet, 3.0 s instead of 37.3 s, output identical to a
fully optimized LoRA session (max |diff| 0.0).

The graph is written once per (the manifest's content hash of the component, ONNX Runtime version,
level, rewrites, CPU) under the model's `engines/<backend>/lora-graph-<key>/` (`model.onnx`,
`model.onnx.data`, `targets.json` last), in a staging folder renamed into place. 3x3 convolutions
are not in it (their layout pass matters for speed, and a LoRA on them is rarer): a LoRA touching
them takes the full path, a session optimized with the overrides. Needs the `onnx` package;
without it every switch takes the full path.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Callable, Iterable

from sdrt import atomic

TARGETS_FILE = "targets.json"
DATA_NAME = "model.onnx.data"


def cpu_name() -> str:
    """The CPU model (part of the key: an optimized graph may use the CPU's own blocked layouts)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def graph_key(content_hash: str, targets: Iterable[str], labels: Iterable[str]) -> str:
    """The graph's content hash (the manifest's, `Manifest.component_hash`), what is kept open, how it is
    optimized (`labels`) and the CPU: never a path or an mtime."""
    text = "|".join([content_hash, *sorted(targets), *labels, cpu_name()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_ready(folder: Path) -> tuple[Path, frozenset[str], frozenset[str]] | None:
    """(graph, initializers it keeps open, those of them in its external-data file), if written."""
    try:
        data = json.loads((folder / TARGETS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return folder / "model.onnx", frozenset(data["targets"]), frozenset(data["external"])


def lora_ready_model(source: Path, content_hash: str, targets: frozenset[str], cache_dir: Path,
                     labels: Iterable[str], optimize: Callable[[Path, Path], None]
                     ) -> tuple[Path, frozenset[str], frozenset[str]]:
    """The LoRA-ready graph of `source` (written once): (path, kept-open initializers, external ones).

    `content_hash` identifies `source`'s content (with `labels`, e.g. the graph rewrites that made it);
    `optimize(graph, out)` runs ONNX Runtime's optimizer on `graph` and saves the result at `out`,
    its large initializers in `out`'s folder as DATA_NAME (the backend's own session options)."""
    import onnx

    source = Path(source)
    key = graph_key(content_hash, targets, labels)
    folder = Path(cache_dir) / f"lora-graph-{key}"
    ready = read_ready(folder)
    if ready is not None:
        return ready
    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    inputs = {i.name for i in graph.input}
    chosen = sorted(n for n in targets if n in initializers and n not in inputs)
    for name in chosen:  # an initializer that is also an input is not a constant to the optimizer
        tensor = initializers[name]
        graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
    # another process may finish the same graph first: theirs is kept, ours dropped
    with atomic.staged_folder(folder, if_exists="keep") as stage:
        work = stage / "source"
        work.mkdir()
        locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
        for location in locations:  # the weights stay where they are, linked in
            try:
                os.link(source.parent / location, work / location)
            except OSError:
                os.symlink((source.parent / location).resolve(), work / location)
        onnx.save(model, str(work / "model.onnx"))
        del model, graph, initializers
        optimize(work / "model.onnx", stage / "model.onnx")
        shutil.rmtree(work)
        optimized = onnx.load(str(stage / "model.onnx"), load_external_data=False)
        kept = [i for i in optimized.graph.input if i.name not in set(chosen)]
        del optimized.graph.input[:]
        optimized.graph.input.extend(kept)
        onnx.save(optimized, str(stage / "model.onnx"))
        present = {t.name: t for t in optimized.graph.initializer}
        open_names = sorted(n for n in chosen if n in present)
        external = sorted(n for n in open_names if present[n].data_location == onnx.TensorProto.EXTERNAL)
        (stage / TARGETS_FILE).write_text(json.dumps({"targets": open_names, "external": external}) + "\n")
    ready = read_ready(folder)
    assert ready is not None
    return ready
