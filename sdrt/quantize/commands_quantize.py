"""`sdrt quantize`: write a quantized copy of an ONNX model folder, scored against the float one.

    sdrt quantize --model out/sd15 --out out/sd15-int8                      # the UNet, int8, built-in prompts
    sdrt quantize --model out/sd15 --out out/sd15-int8 --calibration prompts.txt --size 512
    sdrt quantize --model out/shapes --out out/shapes-int8 --min-psnr 25
    sdrt quantize --model out/sd15 --out out/sd15-trt --scheme int8-symmetric   # for TensorRT too
    sdrt quantize --model out/sd15 --out out/sd15-fp8 --scheme fp8          # for TensorRT on FP8 GPUs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdrt.engines.quantized import SCHEMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdrt.quantize.gate import DEFAULT_MIN_PSNR

    parser.add_argument("--model", required=True, help="the float ONNX model folder (written by `sdrt export`)")
    parser.add_argument("--out", required=True, help="the quantized folder to write (all or nothing)")
    parser.add_argument("--scheme", default="int8", choices=list(SCHEMES),
                        help="int8: int8 weights and activations for the CPUs (VNNI/AMX); int8-symmetric: the same "
                             "with zero points 0, for TensorRT (CPUs run it too); int8-weights: int8 weights, float "
                             "arithmetic (4x smaller files); fp8: TensorRT on FP8 GPUs (default int8)")
    parser.add_argument("--components", default=None,
                        help="comma-separated components to quantize (default: the UNet; e.g. unet,vae_decoder)")
    parser.add_argument("--calibration", default=None,
                        help="a text file with one prompt per line to calibrate on (default: 8 built-in prompts)")
    parser.add_argument("--size", type=int, default=None,
                        help="image size in px of the calibration and gate generations (default: the model's)")
    parser.add_argument("--steps", type=int, default=10,
                        help="denoising steps of each calibration and gate generation (default 10)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="guidance of those generations (default 7.5)")
    parser.add_argument("--min-psnr", type=float, default=DEFAULT_MIN_PSNR,
                        help=f"the gate: mean PSNR of the quantized images vs the float ones, in dB "
                             f"(default {DEFAULT_MIN_PSNR:g})")
    parser.add_argument("--gate", default="auto", choices=("auto", "images", "shapes"),
                        help="images: PSNR/SSIM; shapes: also the shapes detector's prompt following; auto: shapes "
                             "for the trained shapes preset (default auto)")
    parser.add_argument("--accept-quality-loss", action="store_true",
                        help="write the folder even when it fails the gate (the report says so)")
    parser.add_argument("--backend", default="ort-cpu", choices=("ort-cpu", "openvino"),
                        help="the backend that calibrates and scores (default ort-cpu)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from sdrt.errors import SdrtError
    from sdrt.quantize import Request, quantize_model

    if importlib.util.find_spec("onnx") is None:
        raise SdrtError("sdrt quantize needs the onnx package, which is not installed here: pip install 'sdrt[quantize]'")

    components = tuple(c.strip() for c in args.components.split(",") if c.strip()) if args.components else None
    req = Request(model=Path(args.model), out=Path(args.out), scheme=args.scheme, components=components,
                  calibration_file=Path(args.calibration) if args.calibration else None, size=args.size,
                  steps=args.steps, guidance_scale=args.guidance_scale, min_psnr=args.min_psnr, gate=args.gate,
                  accept_quality_loss=args.accept_quality_loss, force=args.force, backend=args.backend)
    report = quantize_model(req, log=lambda line: print(line, file=sys.stderr, flush=True))
    line = (f"quality vs float: PSNR {report['psnr_db_mean']:.1f} dB mean ({report['psnr_db_min']:.1f} worst), "
            f"SSIM {report['ssim_mean']:.3f} over {report['images']} images")
    if "shapes" in report:
        s = report["shapes"]
        line += (f"; prompt following {100 * s['accuracy']:.1f}% (float {100 * s['float_accuracy']:.1f}%), "
                 f"same scene {s['same_scene']}/{s['images']}")
    print(line)
    if not report["passed"]:
        print(f"sdrt: warning: below the gate ({'; '.join(report['failures'])}), written because of "
              f"--accept-quality-loss", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0
