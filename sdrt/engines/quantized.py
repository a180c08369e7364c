"""Quantized components (written by `sdrt quantize`): which backend runs which scheme, and the checks
every load makes on a quantized folder.

A quantized component is an ordinary ONNX graph with QuantizeLinear / DequantizeLinear (Q/DQ) nodes;
its manifest entry carries a `quantization` section (scheme, tool, calibration, quality report). The
graph's inputs and outputs stay float32, so the engines bind the same buffers as for the float
export; each backend turns the Q/DQ pairs into its own int8 (or fp8) kernels when it compiles.

This table is the one place that says which backend runs which scheme (the docs' backend x scheme
matrix is generated from the same words; `sdrt quantize` and `Pipeline.load` read it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sdrt.errors import SdrtError


@dataclass(frozen=True)
class Scheme:
    name: str
    about: str
    #: the backends that run it, fastest first where measured (the rest: GPU-unverified)
    backends: tuple[str, ...]
    #: why the backends left out cannot run it (the refusal's reason)
    why_not: str = ""


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("int8", "int8 weights (symmetric, per output channel) and uint8 activations (asymmetric, per "
                   "tensor, calibrated on the model's own generations): the CPUs' int8 dot products (u8 x s8 is "
                   "what AVX512-VNNI and AMX-INT8 compute)",
           ("openvino", "ort-cpu"),
           why_not="TensorRT takes symmetric int8 only (zero points 0): quantize with --scheme int8-symmetric"),
    Scheme("int8-symmetric", "int8 weights and int8 activations, both symmetric (zero points 0), as TensorRT "
                             "requires of a Q/DQ graph; CPUs run it too, with a little more error than int8",
           ("openvino", "ort-cpu", "tensorrt", "tensorrt_rtx")),
    Scheme("int8-weights", "int8 weights (symmetric, per output channel) dequantized to float at load: a "
                           "4x smaller file, float arithmetic (no calibration)",
           ("openvino", "ort-cpu", "tensorrt", "tensorrt_rtx")),
    Scheme("fp8", "FP8 E4M3 weights and activations (per-tensor scales, calibrated): GPUs with FP8 tensor "
                  "cores (Ada, Hopper, Blackwell)",
           ("tensorrt", "tensorrt_rtx"),
           why_not="CPUs have no FP8 arithmetic (ONNX Runtime and OpenVINO would only emulate it)"),
)}


def scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise SdrtError(f"unknown quantization scheme {name!r}; choose one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def quantized_components(components: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """component -> scheme, for the components of a manifest that `sdrt quantize` wrote."""
    return {name: entry["quantization"]["scheme"] for name, entry in components.items()
            if isinstance(entry.get("quantization"), dict) and "scheme" in entry["quantization"]}


def backends_for(components: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...] | None:
    """The backends that run every quantized component of a manifest (None: nothing is quantized)."""
    schemes = set(quantized_components(components).values())
    if not schemes:
        return None
    order = SCHEMES[next(iter(schemes))].backends if len(schemes) == 1 else ()
    allowed = set.intersection(*(set(scheme(s).backends) for s in schemes))
    return tuple(b for b in order if b in allowed) or tuple(sorted(allowed))


def check_backend(folder: Any, components: Mapping[str, Mapping[str, Any]], backend: str) -> None:
    """One line when `backend` cannot run a quantized component of this folder, naming those that can."""
    for component, name in quantized_components(components).items():
        s = scheme(name)
        if backend not in s.backends:
            why = f" ({s.why_not})" if s.why_not else ""
            raise SdrtError(f"{folder}: {component} is quantized {name}, which backend {backend} cannot run{why}: "
                            f"use --backend {' or '.join(s.backends)}, or quantize with another --scheme")


def filter_candidates(folder: Any, components: Mapping[str, Mapping[str, Any]], names: list[str]) -> list[str]:
    """`auto`'s candidates narrowed to the backends that run this folder's schemes (one line if none is usable)."""
    allowed = backends_for(components)
    if allowed is None:
        return names
    if any(s.startswith("int8") for s in quantized_components(components).values()):  # the CPUs' measured order
        from sdrt.engines.auto import cpu_order

        cpu = cpu_order("int8")
        names = [n for n in names if n not in cpu] + [n for n in cpu if n in names]
    kept = [n for n in names if n in allowed]
    if not kept:
        schemes = sorted(set(quantized_components(components).values()))
        raise SdrtError(f"{folder} is quantized ({', '.join(schemes)}), which only {', '.join(allowed)} run; "
                        f"usable here: {', '.join(names)}: install one of them (sdrt[openvino] for the CPU) or "
                        f"use the float folder it was quantized from")
    return kept


def is_quantized(entry: Mapping[str, Any]) -> bool:
    return isinstance(entry.get("quantization"), dict)


def check_source(manifest: Any) -> None:
    """A folder `sdrt quantize` wrote records the float folder it came from (`quantized_from`) and each
    component's sha256 there; when that folder is still where it was and a component of it changed
    since (exported again), the quantized folder (its calibration, its quality report) no longer
    belongs to it: one line. A moved or deleted source is fine (the quantized folder is complete)."""
    origin = manifest.data.get("quantized_from")
    if not isinstance(origin, dict) or not origin.get("path"):
        return
    try:
        theirs = json.loads((Path(origin["path"]) / "sdrt.json").read_text()).get("components", {})
    except (OSError, ValueError, AttributeError):
        return
    for name, entry in manifest.components.items():
        recorded = (entry.get("quantization") or {}).get("source_sha256") or entry.get("sha256")
        now = (theirs.get(name) or {}).get("sha256")
        if recorded and now and now != recorded:
            raise SdrtError(f"{manifest.folder} was quantized from {origin['path']}, whose {name} changed since "
                            f"(sha256 {now[:12]}... there, {recorded[:12]}... when quantized): quantize it again "
                            f"(sdrt quantize --model {origin['path']} --out {manifest.folder} --force)")
