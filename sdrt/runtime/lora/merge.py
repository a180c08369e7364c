"""Merge LoRA layers into base weights: W' = W + sum_i scale_i * (alpha_i / rank_i) * up_i @ down_i.

In float32 whatever the graph's precision (an fp16 initializer is read, widened, merged and cast
back once), from the memory-mapped base every time, so switching never accumulates error. The
result is a dict initializer name -> merged array per component: what the engines take as
overrides. Names are resolved against the weight map's modules in every spelling a file may use
(sdrt.runtime.lora.names: dotted, underscored, kohya's SDXL LDM names, with or without ``text_model.``;
sdrt.runtime.lora.names_mmdit: the original MMDiT names of SD3 files, whose fused q/k/v layers split
into several modules' rows).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.lora.names import lookup
from sdrt.runtime.lora.names_mmdit import Part, lookup_parts
from sdrt.weight_map import WeightMap
from sdrt.runtime.lora.files import LoraFile, LoraLayer


@dataclass(frozen=True)
class Resolved:
    """One LoRA layer placed on one model parameter."""

    parameter: str      # diffusers parameter name, e.g. down_blocks.0....to_q.weight
    layer: LoraLayer
    scale: float


def check_scale(name: str, scale: float) -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise SdrtError(f"LoRA {name}: scale {scale!r} is not a number") from None
    if not math.isfinite(value):
        raise SdrtError(f"LoRA {name}: scale {value} is not finite: pass a number such as 0.8")
    return value


Tables = tuple[dict[str, tuple[int, ...]], dict[str, str], dict[str, tuple[Part, ...]]]


def _lookup(weight_map: WeightMap, layout: str | None) -> Tables:
    """(module -> weight shape, every spelling a file may use -> module, spelling -> parts of a layer
    that splits over several modules), unused modules included. `layout`: the original module tree
    kohya files name for this component (the family table's `lora_names`: "ldm", "mmdit")."""
    modules = {**weight_map.unused_modules(), **weight_map.modules()}
    config = weight_map.config() if layout == "ldm" else None
    parts = lookup_parts(modules) if layout == "mmdit" else {}
    return modules, lookup(modules, config or None), parts


def resolve(loras: Sequence[tuple[LoraFile, float]], maps: Mapping[str, WeightMap],
            layouts: Mapping[str, str] | None = None) -> list[Resolved]:
    """Place every layer of every file on a parameter; one line for the first thing that does not fit.

    A layer on a module that no graph output depends on (`WeightMap.unused`: the SDXL first text
    encoder's last layer) is checked for shape and then left out: it changes nothing. A layer of an
    original MMDiT name may become several (its parts' rows of the up matrix, the down matrix shared).
    """
    layouts = layouts or {}
    tables = {component: _lookup(m, layouts.get(component)) for component, m in maps.items()}
    placed: list[Resolved] = []
    for lora, scale in loras:
        matched, missing = 0, []
        for layer in lora.layers:  # a component the model lacks first: it names the family the file is for
            if layer.component not in tables:
                raise SdrtError(f"LoRA {lora.name} targets {layer.component} (key {layer.key}), which this model "
                                f"does not have: it was trained for another base model ({_family_guess(layer.component)})")
        for layer in lora.layers:
            modules, spelled, parts = tables[layer.component]
            module = spelled.get(layer.layer)
            if module is None and layer.layer in parts:
                pieces = _split(lora, layer, parts[layer.layer], modules)
            elif module is not None:
                _check_fits(lora, layer, module, modules[module])
                pieces = [(module, layer)]
            else:
                missing.append(layer)
                continue
            matched += 1
            for name, piece in pieces:
                if f"{name}.weight" in maps[layer.component].parameters:
                    placed.append(Resolved(f"{name}.weight", piece, scale))
        if missing:
            raise SdrtError(f"LoRA {lora.name}: {matched} of {len(lora.layers)} layers match this model's layers "
                            f"(first unmatched key: {missing[0].key}): a LoRA for another base model or "
                            f"architecture")
    return placed


def _family_guess(component: str) -> str:
    """The families whose models have `component`, for the message (a transformer: SD3's; text_encoder_2: SDXL's)."""
    from sdrt.spec import FAMILIES

    names = list(dict.fromkeys(f.title.split(" (")[0] for f in FAMILIES.values() if component in f.component_names))
    if not names:
        return "another family?"
    return (", ".join(names[:-1]) + " or " if len(names) > 1 else "") + names[-1] + "?"


def _check_fits(lora: LoraFile, layer: LoraLayer, module: str, shape: tuple[int, ...]) -> None:
    delta_shape = delta_shape_of(layer)
    if int(np.prod(delta_shape)) != int(np.prod(shape)) or delta_shape[0] != shape[0]:
        raise SdrtError(f"LoRA {lora.name} does not fit this model: {layer.key} makes a {delta_shape} "
                        f"update for {layer.component}.{module}.weight of shape {shape} (a LoRA for "
                        f"another base model)")


def _split(lora: LoraFile, layer: LoraLayer, parts: Sequence[Part], modules: Mapping[str, tuple[int, ...]]
           ) -> list[tuple[str, LoraLayer]]:
    """A fused layer's update cut into its modules' rows (the up matrix's rows; down shared)."""
    rows = sum(b - a for part in parts for a, b in part.rows)
    if layer.up.shape[0] != rows:
        raise SdrtError(f"LoRA {lora.name} does not fit this model: {layer.key} updates {layer.up.shape[0]} rows, "
                        f"the model's {' + '.join(p.module for p in parts)} have {rows} (a LoRA for another base model)")
    pieces = []
    for part in parts:
        index = np.concatenate([np.arange(a, b) for a, b in part.rows])
        piece = dataclasses.replace(layer, up=layer.up[index])
        _check_fits(lora, piece, part.module, modules[part.module])
        pieces.append((part.module, piece))
    return pieces


def delta_shape_of(layer: LoraLayer) -> tuple[int, ...]:
    out = layer.up.shape[0]
    if layer.down.ndim == 4:
        return (out, *layer.down.shape[1:])
    return (out, layer.down.shape[1])


def _grouped(placed: Sequence[Resolved]) -> dict[tuple[str, str], list[Resolved]]:
    grouped: dict[tuple[str, str], list[Resolved]] = {}
    for item in placed:
        grouped.setdefault((item.layer.component, item.parameter), []).append(item)
    return grouped


def low_rank_factors(placed: Sequence[Resolved], maps: Mapping[str, WeightMap]
                     ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """component -> {initializer: (A [in, r], B [r, out])} with A @ B = the summed update (transposed to
    the x @ W orientation): every LoRA on the weight concatenated along r, its scale · alpha/rank
    folded into B. For backends that add the update as a side path (sdrt.engines.openvino_lora)."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (component, parameter), items in _grouped(placed).items():
        a = np.concatenate([item.layer.down.astype(np.float32).reshape(item.layer.rank, -1).T for item in items], axis=1)
        b = np.concatenate([(item.layer.up.astype(np.float32).reshape(-1, item.layer.rank)
                             * np.float32(item.scale * item.layer.ratio)).T for item in items], axis=0)
        for record in maps[component].parameters[parameter]:
            out.setdefault(component, {})[record["initializer"]] = (a, b)
    return out


def merged_shapes(placed: Sequence[Resolved], maps: Mapping[str, WeightMap]
                  ) -> dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """component -> {initializer name: (shape, dtype)} of what `merged_weights` will write."""
    out: dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]] = {}
    for component, parameter in _grouped(placed):
        for record in maps[component].parameters[parameter]:
            out.setdefault(component, {})[record["initializer"]] = (tuple(record["shape"]), np.dtype(record["dtype"]))
    return out


Allocate = Callable[[str, str, tuple, np.dtype], np.ndarray]


def _in_memory(component: str, initializer: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


def merged_weights(placed: Sequence[Resolved], maps: Mapping[str, WeightMap],
                   allocate: Allocate = _in_memory) -> dict[str, dict[str, np.ndarray]]:
    """component -> {initializer name: merged array in the initializer's dtype and layout}.

    Per weight: the update as one product of the stacked low-rank factors (every LoRA on the weight
    at once), computed in the initializer's own layout (A @ B for a transposed MatMul weight, B.T @ A.T
    for an [out, in, ...] one) straight into the array `allocate(component, initializer, shape, dtype)`
    gives (a scratch-file page, sdrt.runtime.lora.scratch; by default ordinary memory), then the base
    (read from the memory-mapped file, never changed) added in place: no full-size temporary.
    float16 weights are added in float32 and cast once."""
    factors = low_rank_factors(placed, maps)
    out: dict[str, dict[str, np.ndarray]] = {}
    for (component, parameter), _ in _grouped(placed).items():
        weight_map = maps[component]
        for record in weight_map.parameters[parameter]:
            base = weight_map.base(record)
            a, b = factors[component][record["initializer"]]
            transpose = record["layout"] == "transpose"
            merged = allocate(component, record["initializer"], base.shape, base.dtype)
            if base.dtype == np.float32:
                target = merged if transpose else merged.reshape(merged.shape[0], -1)
                np.matmul(a, b, out=target) if transpose else np.matmul(b.T, a.T, out=target)
                np.add(target, base.reshape(target.shape), out=target)
            else:
                update = (a @ b if transpose else b.T @ a.T).reshape(base.shape)
                np.add(base.astype(np.float32), update, out=update)
                merged[...] = update
            out.setdefault(component, {})[record["initializer"]] = merged
    return out
