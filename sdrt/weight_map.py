"""The weight map of an exported component: its format, and its base weights memory-mapped from the ONNX files.

`<component>/weight_map.json` (built by `sdrt export`, see sdrt/export/weight_map.py) says which
initializer holds which diffusers parameter, in which layout, and where its bytes lie. This module
is the one place that defines the format; export writes it, the runtime's LoRA merge and the engines'
LoRA paths read it. Reading a parameter maps those bytes (no copy, no protobuf parsing, no onnx or
torch import); the merge reads them again for every switch, so a LoRA never accumulates error: the
base is the file on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.errors import SdrtError

FORMAT = "sdrt-weight-map"
VERSION = 1
FILE_NAME = "weight_map.json"


def read_record(folder: Path, record: dict[str, Any]) -> np.ndarray:
    """The initializer of one weight-map record, memory-mapped read-only."""
    dtype = np.dtype(record["dtype"])
    shape = tuple(record["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize != int(record["length"]):
        raise SdrtError(f"{folder / record['file']}: the weight map's record of {record['initializer']} is "
                        f"inconsistent: re-export with sdrt export --force")
    array = np.memmap(folder / record["file"], dtype=dtype, mode="r", offset=int(record["offset"]), shape=shape)
    return array


def linear_initializers(parameters: dict[str, list[dict[str, Any]]]) -> frozenset[str]:
    """Initializers of a weight map's `.weight` parameters a LoRA-ready graph keeps open: 2-D ones
    (Linear layers, as MatMul/Gemm weights) and 4-D ones with a 1x1 kernel (1x1 Conv layers)."""
    names = set()
    for parameter, records in parameters.items():
        if not parameter.endswith(".weight"):
            continue
        for record in records:
            shape = list(record["shape"])
            if len(shape) == 2 or (len(shape) == 4 and shape[2:] == [1, 1]):
                names.add(record["initializer"])
    return frozenset(names)


@dataclass
class WeightMap:
    """One component's map: diffusers parameter name -> the initializers that hold it."""

    component: str
    folder: Path
    parameters: dict[str, list[dict[str, Any]]]
    unused: dict[str, list[int]] = field(default_factory=dict)  # parameters no graph output depends on

    @classmethod
    def load(cls, manifest: Any, component: str) -> "WeightMap":
        entry = manifest.components.get(component, {})
        relative = entry.get("weight_map")
        path = manifest.folder / relative if relative else None
        if path is None or not path.is_file():
            raise SdrtError(f"{manifest.folder} has no weight map for its {component} (exported by an older "
                            f"sdrt): LoRA needs one: re-export with sdrt export --force")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SdrtError(f"{path} is unreadable ({e}): re-export with sdrt export --force") from None
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise SdrtError(f"{path} is not a weight map this sdrt reads: re-export with sdrt export --force")
        return cls(component, path.parent, data["parameters"], data.get("unused", {}))

    def modules(self) -> dict[str, tuple[int, ...]]:
        """Module name -> shape of its `.weight` (the layers a LoRA can target)."""
        return {name[: -len(".weight")]: tuple(records[0]["parameter_shape"])
                for name, records in self.parameters.items() if name.endswith(".weight")}

    def unused_modules(self) -> dict[str, tuple[int, ...]]:
        """Modules whose `.weight` is not in the graph (a LoRA on them has no effect): name -> shape."""
        return {name[: -len(".weight")]: tuple(shape) for name, shape in self.unused.items()
                if name.endswith(".weight")}

    def config(self) -> dict[str, Any] | None:
        """The component's diffusers config.json (the export writes it next to model.onnx), if any."""
        path = self.folder / "config.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError) as e:
            raise SdrtError(f"{path} is unreadable ({e}): re-export with sdrt export --force") from None

    def external(self) -> frozenset[str]:
        """Initializers stored in an external-data file (not inline in model.onnx)."""
        return frozenset(r["initializer"] for records in self.parameters.values() for r in records
                         if not r["file"].endswith(".onnx"))

    def base(self, record: dict[str, Any]) -> np.ndarray:
        return read_record(self.folder, record)
