"""Stand-ins that make exporter tests fast: 'trace' by copying an already exported graph.

The exporter's flow (load, check against PyTorch, size probe, staging, manifest) stays real;
only the slow torch.export step is replaced.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import numpy_helper

from sdrt import residual_graph, spec


def corrupt(path: Path) -> None:
    """Double the largest weight of a graph: a wrong graph that still runs."""
    model = onnx.load(str(path))
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    doubled = numpy_helper.to_array(biggest) * 2.0
    biggest.CopyFrom(numpy_helper.from_array(doubled.astype(doubled.dtype), biggest.name))
    onnx.save(model, str(path))


def copying_export(folder: Path, *, corrupt_component: str | None = None,
                   before: Callable[[str], None] | None = None) -> Callable[..., None]:
    """A replacement for `sdrt.export.trace.export_graph` that copies `folder`'s graphs."""

    def export_graph(graph: Any, comp: Any, example: Any, path: Path, **kwargs: Any) -> None:
        component = comp.name
        if before is not None:
            before(component)
        stored = folder / component / "model.onnx"
        if spec.Name.MID_BLOCK_RESIDUAL in comp.input_names:
            # a UNet traced with ControlNet residual inputs: the stored graph with them added back
            residual_graph.add_inputs(stored, path, comp, kwargs.get("precision", "fp32"))
        else:
            shutil.copyfile(stored, path)
        if component == corrupt_component:
            corrupt(path)

    return export_graph


def leftovers(parent: Path, name: str) -> list[str]:
    """Anything in `parent` named after `name` (the folder or its temporary siblings)."""
    return sorted(p.name for p in parent.iterdir() if name in p.name)
