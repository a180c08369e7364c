"""ONNX Runtime CPU speed levers: session-option presets and graph rewrites, by name.

What each lever gave on the SD 1.5 graphs is in benchmarks/README.md ("CPU levers"). Use:

    from sdrt.engines.ort_tuning import backend_options
    pipe = Pipeline.load(folder, "ort-cpu", **backend_options("ort-cpu", "fast"))

A rewritten graph is written once next to the engines (``<folder>/engines/ort-cpu/rewrites-<key>/``),
keyed by the component's content hash (the manifest's sha256), the rewrites and the onnx version,
so a stale one is never loaded; its weights file is hard-linked to the original (no copy of 3.4 GB).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from sdrt import atomic
from sdrt.errors import SdrtError
from sdrt.hashing import files_sha256


def physical_cores() -> int:
    """Physical cores (hyper-threads slow the GEMMs down); ONNX Runtime's own default too."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


#: preset name -> ort-cpu backend options. "default" is onnxruntime's own behaviour.
CPU_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {
        "graph_optimization_level": "all",  # NCHWc conv layout (AVX-512/AVX2 blocked kernels)
        "graph_rewrites": ("attention_to_mha", "group_norm_to_instance_norm"),
    },
}
DEFAULT_PRESET = "fast"


def backend_options(backend: str, preset: str | None, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """Backend keyword arguments for a tuning preset; only ort-cpu has presets."""
    name = preset or DEFAULT_PRESET
    if name not in CPU_PRESETS:
        raise SdrtError(f"unknown ONNX Runtime tuning preset {name!r}; choose one of: {', '.join(CPU_PRESETS)}")
    if backend != "ort-cpu":
        return {}
    options = dict(CPU_PRESETS[name])
    if "graph_rewrites" in options:
        options["graph_rewrites"] = tuple(options["graph_rewrites"])
    return options


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def rewritten_model(path: str | os.PathLike, rewrites: Sequence[str], cache_dir: str | os.PathLike,
                    content_hash: str | None = None) -> Path:
    """``path``'s graph with ``rewrites`` applied, written once under ``cache_dir``; its path.

    Keyed by ``content_hash`` (the backend passes ``Manifest.component_hash``; without one, the
    sha256 of the graph and its weights files), the rewrites and the onnx version. Returns ``path``
    itself when no rewrite matched anything (nothing to gain from a copy).
    """
    import onnx

    from sdrt.engines.ort_graph_rewrites import REWRITES, prune_dead_nodes

    unknown = [r for r in rewrites if r not in REWRITES]
    if unknown:
        raise SdrtError(f"unknown graph rewrite {unknown[0]!r}; choose from: {', '.join(REWRITES)}")
    path = Path(path)
    ordered = [r for r in REWRITES if r in rewrites]
    if content_hash is None:
        content_hash = files_sha256([path, *sorted(p for p in path.parent.glob(path.name + ".*") if p.is_file())])
    key = hashlib.sha256("|".join([content_hash, *ordered, onnx.__version__]).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / f"rewrites-{key}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only model folder: the user's cache instead
        folder = Path(os.environ.get("SDRT_CACHE") or Path.home() / ".cache" / "sdrt").expanduser() \
            / "ort-rewrites" / folder.name
    target = folder / path.name
    if target.is_file():
        return target
    if (folder / "unchanged").is_file():
        return path
    model = onnx.load(str(path), load_external_data=False)
    changed = sum(REWRITES[name](model) for name in ordered)
    # another process may finish the same entry first: theirs is kept (the same graph), ours dropped
    with atomic.staged_folder(folder, if_exists="keep") as tmp:
        if changed:
            prune_dead_nodes(model.graph)
            locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
            for location in locations:  # weights stay in the original file, linked in
                _link_or_copy(path.parent / location, tmp / location)
            onnx.save(model, str(tmp / path.name))
        else:
            (tmp / "unchanged").write_text("no rewrite matched this graph\n")
    return target if changed else path
