"""`sdrt info`: what this install can do here, and what an ONNX model folder holds."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform

from sdrt.errors import SdrtError

#: distributions whose versions matter for a bug report or a benchmark's method
PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "tokenizers", "pillow", "onnx", "torch",
            "diffusers", "transformers", "openvino", "tensorrt", "tensorrt-rtx", "polygraphy", "cuda-python")


def versions() -> dict[str, str | None]:
    from sdrt import __version__

    found: dict[str, str | None] = {"sdrt": __version__, "python": platform.python_version()}
    for dist in PACKAGES:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def backend_status() -> dict[str, str]:
    """Each backend: 'usable', or the one-line reason it is not."""
    from sdrt.engines import base

    status = {}
    for name in base.AUTO_ORDER:
        try:
            base.backend_class(name).check_available()
            status[name] = "usable"
        except SdrtError as e:
            status[name] = str(e)
    return status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="an ONNX model folder (written by `sdrt export` or `sdrt demo`)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--verify", action="store_true",
                        help="check every component file against the sha256 recorded at export (reads all weights)")


def run(args: argparse.Namespace) -> int:
    report: dict = {"versions": versions(), "backends": backend_status()}
    if args.model:
        from sdrt.manifest import Manifest

        m = Manifest.load(args.model)
        if args.verify:
            m.verify()  # one line naming the first changed file
        report["model"] = {
            "folder": str(m.folder),
            "source": m.data.get("source"),
            "pipeline": m.pipeline,
            "sizes": m.data["sizes"],
            "components": {k: {"precision": v.get("precision"), "check": v.get("check"),
                               **({"quantization": v["quantization"]} if v.get("quantization") else {})}
                           for k, v in m.components.items()},
            **({"quantized_from": m.data["quantized_from"]} if m.data.get("quantized_from") else {}),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("versions:")
    for k, v in report["versions"].items():
        print(f"  {k:16} {v or '-'}")
    print("backends (auto picks the first usable):")
    for k, v in report["backends"].items():
        print(f"  {k:16} {v}")
    if "model" in report:
        mod = report["model"]
        p, s = mod["pipeline"], mod["sizes"]
        f = p["vae_scale_factor"]
        print(f"model {mod['folder']}: {p['class_name']}, {p['prediction_type']}, "
              f"default {p['sample_size'] * f} px, sizes multiple of {s['latent_multiple'] * f} px "
              f"in {s['min_latent'] * f}..{s['max_latent'] * f}")
        if "quantized_from" in mod:
            print(f"  quantized from {mod['quantized_from']['path']} by sdrt quantize")
        for name, c in mod["components"].items():
            if "quantization" in c:
                print(f"  {name:14} {_quantized_line(c['quantization'])}")
                continue
            check = c["check"] or {}
            err = check.get("max_rel_error")  # the number export prints and its threshold is set on
            print(f"  {name:14} {c['precision']:5} export check "
                  f"{'passed' if check.get('passed') else 'FAILED'}"
                  + (f" (max rel error {err:.2e})" if isinstance(err, (int, float)) else ""))
        if args.verify:
            print("verified: every component matches the sha256 recorded at export")
    return 0


def _quantized_line(q: dict) -> str:
    """One line: scheme, tool, calibration and the gate's scores."""
    quality = q.get("quality") or {}
    cal = q.get("calibration") or {}
    text = f"{q.get('scheme')} ({q.get('tool')} {q.get('tool_version') or ''})".replace(" )", ")")
    if cal:
        text += f", calibrated on {cal.get('prompts')} prompts x {cal.get('steps')} steps"
    if quality:
        verdict = "passed" if quality.get("passed") else "FAILED (written with --accept-quality-loss)"
        text += (f"; gate {verdict}: PSNR {quality.get('psnr_db_mean')} dB vs float, "
                 f"SSIM {quality.get('ssim_mean')}")
        shapes = quality.get("shapes")
        if shapes:
            text += (f", prompt following {100 * shapes['accuracy']:.1f}% "
                     f"(float {100 * shapes['float_accuracy']:.1f}%), same scene {shapes['same_scene']}/{shapes['images']}")
    return text
