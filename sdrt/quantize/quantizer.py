"""`quantize_model`: a float ONNX folder -> a quantized folder that passed the quality gate, or nothing.

The steps, each before the next:

1. check everything a user can get wrong (an already quantized folder, an unknown scheme or
   component, an unreadable calibration file, an existing output) before any model runs;
2. calibrate: the float folder generates the calibration prompts on ort-cpu with a `Recorder` on
   each component to quantize (schemes with activations only);
3. write each quantized graph into a staging folder beside `out`, link the rest;
4. score the staged folder against the float one (`gate`), one pipeline in memory at a time;
5. below the bound: raise, and the staging folder vanishes; otherwise record the report in sdrt.json
   and rename the staging folder into place (`sdrt.atomic.staged_folder`).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sdrt import atomic
from sdrt.engines.quantized import quantized_components, scheme as scheme_of
from sdrt.errors import SdrtError
from sdrt.manifest import Manifest, write_manifest
from sdrt.quantize import calibration as calib, folder as layout, gate, graphs

#: components quantized when --components is not given (the one run per step)
DEFAULT_COMPONENTS = ("denoiser",)
#: schemes whose activations are quantized: they need calibration samples
CALIBRATED = ("int8", "int8-symmetric", "fp8")


@dataclass(frozen=True)
class Request:
    model: Path
    out: Path
    scheme: str = "int8"
    components: tuple[str, ...] | None = None  # None: the family's denoiser
    calibration_file: Path | None = None
    size: int | None = None  # calibration and gate image size (None: the model's default)
    steps: int = 10
    guidance_scale: float = 7.5
    min_psnr: float = gate.DEFAULT_MIN_PSNR
    gate: str = "auto"  # auto | images | shapes
    accept_quality_loss: bool = False
    force: bool = False
    backend: str = "ort-cpu"  # what calibrates and scores


def _components(manifest: Manifest, asked: tuple[str, ...] | None) -> list[str]:
    names = [manifest.family_spec.denoiser] if not asked else list(asked)
    for name in names:
        if name not in manifest.components:
            raise SdrtError(f"{manifest.folder} has no component {name!r} to quantize; it has: "
                            f"{', '.join(manifest.components)}")
    return names


def check_request(req: Request) -> tuple[Manifest, list[str], calib.CalibrationSet | None, str]:
    """Every bad input as one line, before any model runs."""
    source = Manifest.load(req.model)
    done = quantized_components(source.components)
    if done:
        raise SdrtError(f"{req.model} is already quantized ({', '.join(f'{k}: {v}' for k, v in done.items())}): "
                        f"quantize the float folder it came from "
                        f"({(source.data.get('quantized_from') or {}).get('path', 'the export')})")
    scheme_of(req.scheme)
    names = _components(source, req.components)
    if req.out.exists() and not req.force:
        raise SdrtError(f"{req.out} exists: choose another --out, or pass --force to replace it")
    if req.out.resolve() == req.model.resolve():
        raise SdrtError(f"--out {req.out} is the float folder itself: write the quantized model to another folder")
    if req.gate not in ("auto", "images", "shapes"):
        raise SdrtError(f"--gate {req.gate!r} is not one of: auto, images, shapes")
    size = req.size or source.default_image_size
    source.sizes.check_image_size(size, size)
    if req.steps < 1:
        raise SdrtError(f"--steps {req.steps} must be at least 1")
    cal = None
    kind = gate.gate_kind(source, req.gate)
    if req.scheme in CALIBRATED:
        prompts, where = calib.read_prompts(req.calibration_file)
        if req.calibration_file is None and kind == "shapes":  # the captions the shapes model knows
            prompts, where = gate.shapes_calibration_prompts(), "built-in shapes captions"
        cal = calib.CalibrationSet(prompts, where, req.steps, req.guidance_scale, size, seed=0)
    elif req.calibration_file is not None:
        raise SdrtError(f"--scheme {req.scheme} quantizes weights only and needs no calibration: leave "
                        f"--calibration out, or use --scheme int8")
    return source, names, cal, kind


def quantize_model(req: Request, log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Write the quantized folder `req.out`; returns its quality report (raises when the gate fails)."""
    from sdrt.runtime.pipeline import Pipeline

    source, names, cal, kind = check_request(req)
    t0 = time.perf_counter()
    samples: dict[str, list] = {}
    if cal is not None:
        log(f"calibrating {', '.join(names)} on {len(cal.prompts)} prompts x {cal.steps} steps at {cal.size}px "
            f"({req.backend}, {cal.source} prompts)")
        pipe = Pipeline.load(req.model, backend=req.backend)
        try:
            samples = calib.collect(pipe, names, cal, log)
        finally:
            pipe.close()
            del pipe
            gc.collect()
    with atomic.terminate_as_exception(), \
            atomic.staged_folder(req.out, if_exists="replace" if req.force else "fail") as stage:
        entries = {}
        layout.link_source(req.model, stage, {n: Path(source.components[n]["file"]).parent for n in names})
        for name in names:
            entry = source.components[name]
            target = stage / entry["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            log(f"quantizing {name} ({req.scheme}) ...")
            described = None
            if cal is not None:
                recorded = samples.pop(name)  # freed after this component: one component's samples at a time
                facts = graphs.static(source.onnx_path(name), target, recorded, req.scheme)
                described = cal.describe(len(recorded))
                del recorded
            else:
                facts = graphs.weights_only(source.onnx_path(name), target)
            facts["seconds"] = round(time.perf_counter() - t, 1)
            entries[name] = layout.component_entry(stage, entry, req.scheme, facts, described)
            gc.collect()
        data = layout.quantized_manifest(source.data, req.model, entries)
        write_manifest(stage, data)
        report = score(req, source, stage, kind, names, log)
        gate.check(report, {n: req.scheme for n in names}, req.accept_quality_loss)
        for name in names:
            data["components"][name]["quantization"]["quality"] = {**report, "scored_together": names}
        data["quantized_from"]["seconds"] = round(time.perf_counter() - t0, 1)
        write_manifest(stage, data)
    return report


def score(req: Request, source: Manifest, stage: Path, kind: str, names: list[str],
          log: Callable[[str], None]) -> dict[str, Any]:
    """Float images, then quantized ones (one pipeline at a time), then the gate's report."""
    from sdrt.runtime.pipeline import Pipeline

    size = req.size or source.default_image_size
    gates = gate.gate_set(kind, req.steps, req.guidance_scale, size)
    log(f"quality gate ({kind}): {len(gates.prompts)} prompts x {len(gates.seeds)} seeds, float ...")
    pipe = Pipeline.load(req.model, backend=req.backend)
    try:
        reference = gate.generate(pipe, gates, log)
    finally:
        pipe.close()
        del pipe
        gc.collect()
    log(f"quality gate: quantized ({req.scheme}) ...")
    pipe = gate.open_pipeline(stage, req.backend)
    try:
        candidate = gate.generate(pipe, gates, log)
    finally:
        pipe.close()
        del pipe
        gc.collect()
    report = gate.score(reference, candidate, gates, req.min_psnr)
    report["backend"] = req.backend
    return report
