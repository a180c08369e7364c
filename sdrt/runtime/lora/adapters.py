"""The LoRAs a Pipeline has applied, and the switch from one set to another.

A switch reads and checks every file and merges every weight *before* an engine is touched, so a
bad file leaves the pipeline as it was; then each affected component (text encoder, UNet) gets
its new weights through `Backend.reweight`. The merge starts from the memory-mapped export every
time: A -> B -> A gives A's weights bit for bit, and `[]` gives the export's own engines.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, MutableMapping, Sequence, Union

import numpy as np

from sdrt.engines.quantized import is_quantized
from sdrt.errors import SdrtError, warn
from sdrt.weight_map import WeightMap
from sdrt.runtime.lora.files import LoraFile, read_lora
from sdrt.runtime.lora.merge import check_scale, low_rank_factors, merged_shapes, merged_weights, resolve
from sdrt.runtime.lora.scratch import store_for

LoraSpec = Union[str, os.PathLike, tuple]


@dataclass(frozen=True)
class ActiveLora:
    name: str
    path: str
    scale: float
    short_hash: str
    format: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "scale": self.scale, "hash": self.short_hash,
                "format": self.format}


def parse_lora_arg(text: str) -> tuple[str, float]:
    """`PATH[:SCALE]` (the CLI's --lora) -> (path, scale); a tail that is not a number is part of the path."""
    head, sep, tail = str(text).rpartition(":")
    if sep and head:
        try:
            return head, check_scale(head, float(tail))
        except ValueError:
            pass
    return str(text), 1.0


def _pairs(loras: Iterable[LoraSpec]) -> list[tuple[str, float]]:
    pairs = []
    for item in loras:
        if isinstance(item, (str, os.PathLike)):
            pairs.append((os.fspath(item), 1.0))
        elif isinstance(item, tuple) and len(item) == 2:
            pairs.append((os.fspath(item[0]), check_scale(os.fspath(item[0]), item[1])))
        else:
            raise SdrtError(f"a LoRA is a path or a (path, scale) pair, not {item!r}")
    return pairs


#: AUTOMATIC1111's prompt syntax: <lora:NAME> or <lora:NAME:SCALE>
PROMPT_TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>")


def prompt_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """(prompt without its <lora:NAME:SCALE> tags, [(NAME, scale)]): the names as written (scale 1 if left out)."""
    found = []
    for match in PROMPT_TAG.finditer(prompt):
        name, scale_text = match.group(1).strip(), match.group(2)
        try:
            scale = 1.0 if scale_text in (None, "") else float(scale_text)
        except ValueError:
            raise SdrtError(f"<lora:{name}:{scale_text}>: the scale is not a number") from None
        found.append((name, check_scale(name, scale)))
    return " ".join(PROMPT_TAG.sub("", prompt).split()), found


def prompt_loras(prompt: str, lora_dir: str | os.PathLike | None) -> tuple[str, list[tuple[str, float]]]:
    """(prompt without its <lora:name:scale> tags, [(file, scale)]) with names looked up in `lora_dir`."""
    text, tags = prompt_tags(prompt)
    found = []
    for name, scale in tags:
        if lora_dir is None:
            raise SdrtError(f"the prompt names <lora:{name}>: pass --lora-dir, the folder holding {name}.safetensors")
        path = Path(lora_dir) / f"{name}.safetensors"
        if not path.is_file():
            raise SdrtError(f"the prompt names <lora:{name}> but {path} does not exist")
        found.append((str(path), scale))
    return text, found


class Adapters:
    """The applied LoRAs of one pipeline and the initializers they changed."""

    def __init__(self, manifest: Any):
        self.manifest = manifest
        #: components whose weights a LoRA changes, in the order they are swapped (the family table's)
        self.components = manifest.family_spec.lora_components
        self.active: list[ActiveLora] = []
        self.changed: dict[str, dict[str, np.ndarray]] = {}  # component -> initializer -> merged value
        self.branched: set[str] = set()  # components whose LoRAs are side paths (backend.set_lora_factors)
        #: component -> initializer -> value other features set and every switch keeps (textual inversion's
        #: extended token tables, sdrt.runtime.textual_inversion)
        self.extra: dict[str, dict[str, np.ndarray]] = {}
        self._maps: dict[str, WeightMap] = {}

    def weight_map(self, component: str) -> WeightMap:
        if component not in self._maps:
            self._maps[component] = WeightMap.load(self.manifest, component)
        return self._maps[component]

    def prepare(self, loras: Sequence[LoraSpec]) -> tuple[list[ActiveLora], list, dict[str, WeightMap]]:
        """Read and check every file against the weight maps (every bad-input error is raised here);
        touches no engine and merges nothing yet."""
        files: list[tuple[LoraFile, float]] = [(self._without_absent(read_lora(path, self.manifest.family_spec.lora_prefixes)),
                                                 scale) for path, scale in _pairs(loras)]
        targets = sorted({layer.component for f, _ in files for layer in f.layers})
        maps = {c: self.weight_map(c) for c in targets if c in self.components and self.manifest.has(c)}
        placed = resolve(files, maps, self.manifest.family_spec.lora_names)
        active = [ActiveLora(f.name, str(f.path), scale, f.short_hash, f.format) for f, scale in files]
        return active, placed, maps

    def apply(self, backend: Any, engines: MutableMapping[str, Any], loras: Sequence[LoraSpec]) -> None:
        """Switch to exactly `loras` ([] = none), one component at a time.

        Every file is checked and every merged component's scratch file reserved first (a bad file
        or a full disk leaves the pipeline as it was). A backend with LoRA side paths (OpenVINO,
        `lora_branches`) gets the low-rank factors of a component whose LoRA layers all have one:
        nothing is merged. Otherwise, per component, the old engine's weights are released
        (`release_for_reweight`), the merged weights written into the scratch file
        (sdrt.runtime.lora.scratch: page cache, not a second resident copy of the layers) and the
        engine rebuilt or refitted with them."""
        active, placed, maps = self.prepare(loras)
        by_component = {c: [item for item in placed if item.layer.component == c] for c in self.components}
        side = {c for c, items in by_component.items() if items and self._side_path(backend, c, items, maps)}
        for component, items in by_component.items():
            if items and component not in side and is_quantized(self.manifest.components.get(component, {})):
                raise SdrtError(f"{self.manifest.folder}: the {component} is quantized "
                                f"({self.manifest.components[component]['quantization']['scheme']}): a LoRA on it runs "
                                f"as float side paths beside the int8 layers, which backend {backend.name} has not "
                                f"for every layer this LoRA changes (Linear and 1x1 Conv only, on ort-cpu and "
                                f"openvino with dynamic shapes): leave its 3x3 conv layers out, or use the float "
                                f"folder")
        shapes = merged_shapes([item for c, items in by_component.items() if c not in side for item in items], maps)
        stores = {component: store_for(shapes[component], self.manifest.folder) for component in shapes}
        for component in self.components:
            items = by_component[component]
            old = self.changed.get(component, {})
            extra = self.extra.get(component, {})
            if not items and not old and not extra and component not in self.branched:
                continue
            if component in side:
                factors = low_rank_factors(items, maps).get(component, {})
                engines[component] = backend.set_lora_factors(self.manifest, component, engines[component], factors)
                self.changed[component] = {}
                self.branched.add(component)
                continue
            backend.release_for_reweight(engines[component])
            new = {}
            if items:
                store = stores[component]
                new = merged_weights(items, maps, lambda c, n, shape, dtype: store.array(shape, dtype)).get(component, {})
            restore = {name: self._base(component, name) for name in old if name not in new}
            external = self.weight_map(component).external() & (set(new) | set(extra))
            engines[component] = backend.reweight(self.manifest, component, engines[component], {**new, **extra},
                                                  restore, external=external)
            self.changed[component] = new
            self.branched.discard(component)
        self.active = active

    def _without_absent(self, lora: LoraFile) -> LoraFile:
        """The file without its layers on an optional component this model was exported without (SD3's
        T5: the runtime feeds zeros in its place, so a LoRA on it changes nothing), with a warning."""
        absent = {c for c in self.components if not self.manifest.has(c)}
        dropped = [layer for layer in lora.layers if layer.component in absent]
        if not dropped:
            return lora
        names = ", ".join(sorted({layer.component for layer in dropped}))
        warn(f"LoRA {lora.name}: {len(dropped)} of its layers change {names}, which {self.manifest.folder} was "
             f"exported without (its output is zeros there): they change nothing and are left out")
        return dataclasses.replace(lora, layers=tuple(layer for layer in lora.layers if layer.component not in absent))

    def _side_path(self, backend: Any, component: str, items: Sequence, maps: Mapping[str, WeightMap]) -> bool:
        """Whether `component`'s LoRA layers all go in as side paths on this backend."""
        if not backend.lora_branches:
            return False
        records = maps[component].parameters
        wanted = {r["initializer"] for item in items for r in records[item.parameter]}
        return wanted <= backend.branchable(self.manifest, component)

    def _base(self, component: str, initializer: str) -> np.ndarray:
        weight_map = self.weight_map(component)
        for records in weight_map.parameters.values():
            for record in records:
                if record["initializer"] == initializer:
                    return weight_map.base(record)
        raise KeyError(initializer)
