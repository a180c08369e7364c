"""How much each reduced precision changes the image, on the trained `shapes` preset next to the
random-weight presets: PSNR of each variant's images against the same model's fp32 images.

    python -m sdrt.bench.precision --out benchmarks/results/precision-DATE [--presets shapes tiny tiny-sd21]

Variants measured where the backends offer them on this machine:

- ``fp16 (ort-cpu)``: `sdrt export --precision fp16` (the VAE stays fp32 where its config asks for
  it, as diffusers does), run by ONNX Runtime on the CPU;
- ``bf16 (openvino)``: the fp32 export, run by the `openvino` backend with bf16 inference
  precision, when that backend and its precision option exist here;
- GPU fp16 needs a GPU: reported as not measured.

Same prompts, same initial latents and same sampler (the preset's, 20 steps, guidance 5) on both
sides of each comparison. Writes results.json and results.md under --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sdrt.atomic import write_text
from sdrt.bench.provenance import record_run
from sdrt.bench.shapes_quality import GUIDANCE, QUICK_SCENES, STEPS, _psnr

DEFAULT_PRESETS = ("shapes", "tiny", "tiny-sd21")
PROMPTS = [s.caption for s in QUICK_SCENES[:6]]


def export_cached(cache: Path, preset: str, precision: str) -> Path:
    from sdrt.export.exporter import export_model
    from sdrt.export.presets import write_preset
    from sdrt.export.source import hash_folder
    from sdrt.manifest import Manifest

    src = cache / f"{preset}-diffusers"
    if not (src / "model_index.json").is_file():
        write_preset(preset, src, force=src.exists())
    onnx = cache / f"{preset}-onnx-{precision}"
    try:
        fresh = Manifest.load(onnx).data.get("source", {}).get("content_hash") == hash_folder(src)
    except Exception:  # noqa: BLE001 - missing or unreadable: export again
        fresh = False
    if not fresh:
        export_model(str(src), onnx, precision=precision, force=onnx.exists(), log=lambda line: None)
    return onnx


def images_of(pipe: Any, size: int) -> np.ndarray:
    f = pipe.vae_scale_factor
    out = []
    for i, prompt in enumerate(PROMPTS):
        latents = np.random.default_rng(i).standard_normal((1, pipe.latent_channels, size // f, size // f),
                                                           dtype=np.float32)
        out.append(pipe(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
                        latents=latents, output_type="np").images[0])
    return np.stack(out)


def openvino_bf16() -> Callable[[Path], Any] | None:
    """A loader for the openvino backend in bf16, or None where this install has no such option."""
    from sdrt.runtime import Pipeline

    try:
        from sdrt.engines import openvino  # noqa: F401 - the backend module of issue 10
    except ImportError:
        return None
    try:
        import openvino as ov  # noqa: F401
    except ImportError:
        return None
    return lambda folder: Pipeline.load(folder, backend="openvino", precision="bf16")


def measure(presets: list[str], cache: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from sdrt.manifest import Manifest
    from sdrt.runtime import Pipeline

    rows = []
    bf16 = openvino_bf16()
    for preset in presets:
        fp32 = export_cached(cache, preset, "fp32")
        size = Manifest.load(fp32).default_image_size
        base_pipe = Pipeline.load(fp32, backend="ort-cpu")
        base = images_of(base_pipe, size)
        base_pipe.close()
        variants: list[tuple[str, Callable[[], Any], str]] = [
            ("fp16 (ort-cpu)", lambda: Pipeline.load(export_cached(cache, preset, "fp16"), backend="ort-cpu"), "")]
        if bf16 is not None:
            variants.append(("bf16 (openvino, CPU)", lambda: bf16(fp32), ""))
        for name, load, _ in variants:
            log(f"{preset}: {name}")
            try:
                pipe = load()
                images = images_of(pipe, size)
                precisions = {c: pipe.manifest.precision(c) for c in pipe.manifest.components}
                if "bf16" in name:  # OpenVINO's inference-precision hint covers every component
                    precisions = {c: "bf16 (run time)" for c in precisions}
                pipe.close()
            except Exception as e:  # noqa: BLE001 - a variant this machine cannot run is reported, not fatal
                rows.append({"preset": preset, "variant": name, "error": f"{type(e).__name__}: {e}"})
                continue
            psnrs = [_psnr(a, b) for a, b in zip(images, base)]
            rows.append({"preset": preset, "variant": name, "size": size, "images": len(psnrs),
                         "psnr_db_mean": float(np.mean(psnrs)), "psnr_db_min": float(np.min(psnrs)),
                         "component_precision": precisions})
        rows.append({"preset": preset, "variant": "fp16 (GPU)", "error": "not measured: no GPU on this machine"})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| preset | weights | variant | reduced components | PSNR vs fp32, mean (dB) | min (dB) |",
             "|---|---|---|---|---:|---:|"]
    for r in rows:
        weights = "trained" if r["preset"] == "shapes" else "random"
        if "error" in r:
            lines.append(f"| {r['preset']} | {weights} | {r['variant']} | – | {r['error']} | |")
        else:
            reduced = ", ".join(c for c, p in r["component_precision"].items() if p != "fp32") or "none"
            lines.append(f"| {r['preset']} | {weights} | {r['variant']} | {reduced} | {r['psnr_db_mean']:.1f} | "
                         f"{r['psnr_db_min']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdrt.bench.precision", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/sdrt/precision"))
    args = p.parse_args(argv)
    out, cache = Path(args.out), Path(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    rows = measure(args.presets, cache, log=lambda line: print(f"[precision] {line}", flush=True))
    method = (f"{len(PROMPTS)} prompts (shapes captions) x 1 seeded initial latent each, {STEPS} steps of the "
              f"preset's sampler, guidance {GUIDANCE}, at each preset's default size; PSNR of each variant's "
              f"images against the same ONNX model's fp32 images on ort-cpu (8-bit scale, [0, 1] images). "
              f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
              f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}.")
    write_text(out / "results.json", json.dumps({"rows": rows, "method": method}, indent=2) + "\n")
    write_text(out / "results.md", f"# Reduced precision vs fp32\n\n{markdown(rows)}\n\nMethod: {method}\n")
    record_run(out)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
