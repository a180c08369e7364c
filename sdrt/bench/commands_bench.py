"""`sdrt bench`: sdrt against the PyTorch reference in one run, per stage, with a report and a chart.

    sdrt bench --suite cpu-quick
    sdrt bench --suite cpu-sd15 --onnx /work/sd15-onnx
    sdrt bench --model out/tiny --backend ort-cpu --steps 10 --reps 3
    sdrt bench --suite soak --generations 1000

Heavy libraries (onnxruntime, torch, diffusers) are imported inside ``run``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sdrt.bench.suites import SUITES
from sdrt.engines.ort_tuning import CPU_PRESETS, DEFAULT_PRESET

DEFAULT_PROMPT = "a photograph of an astronaut riding a horse"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--suite", choices=[*SUITES, "fault-soak"],
                      help="a predefined suite (benchmarks/README.md); fault-soak: 4 threads on one tiny Pipeline "
                           "with bad inputs interleaved (--generations, default 200)")
    what.add_argument("--model", help="an ONNX model folder, a diffusers folder or a preset name")
    parser.add_argument("--onnx", help="an already exported ONNX folder of the suite's model (skips the export)")
    parser.add_argument("--backend", action="append",
                        help="sdrt backend(s) to measure, BACKEND, BACKEND:PRECISION (openvino:bf16) or BACKEND:OPTION "
                             "(ort-cuda:cuda_graph, a boolean option on); repeatable; "
                             "default: the suite's")
    parser.add_argument("--peer", action="append",
                        help="other runtimes on the same weights (repeatable): diffusers:bf16, openvino-genai:f32, "
                             "openvino-genai:bf16, or none; default: the suite's")
    parser.add_argument("--height", type=int, help="image height in pixels (default: the suite's, else the model's)")
    parser.add_argument("--width", type=int, help="image width in pixels (default: the suite's, else the model's)")
    parser.add_argument("--steps", type=int, help="denoising steps per generation (default: the suite's)")
    parser.add_argument("--batch", type=int, action="append",
                        help="images per prompt (repeatable; default: the suite's)")
    parser.add_argument("--scheduler", help="scheduler class name (default: the model's own)")
    parser.add_argument("--guidance-scale", type=float,
                        help="classifier-free guidance; <= 1 turns it off (default: the suite's)")
    parser.add_argument("--reps", type=int, help="timed calls per contender (default: the suite's)")
    parser.add_argument("--warmup", type=int, help="untimed calls per contender before timing (default: the suite's)")
    parser.add_argument("--generations", type=int, help="soak: number of timed generations (default: the suite's)")
    parser.add_argument("--tuning", default=None,
                        help=f"ONNX Runtime CPU tuning preset: {', '.join(CPU_PRESETS)} (default {DEFAULT_PRESET}; "
                             f"default = onnxruntime's own settings)")
    parser.add_argument("--threads", type=int, help="intra-op threads for ONNX Runtime (default: physical cores)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"prompt of every generation (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the injected initial latents (default 0)")
    parser.add_argument("--out", default=None, help="results folder (default: benchmarks/results; cpu-quick and "
                                                            "custom runs on a tiny preset: benchmarks/dryruns)")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.suite == "fault-soak":
        return _fault_soak(args)
    from sdrt.bench.plan import plan_from_args, run_plan

    plan = plan_from_args(args)
    written = run_plan(plan, log=_log)
    for paths in written:
        print(f"wrote {paths['markdown']}")
        print(Path(paths["markdown"]).read_text().split("\n## Method")[0].strip())
    return 0


def _fault_soak(args: argparse.Namespace) -> int:
    import datetime

    from sdrt.bench.fault_soak import run_fault_soak, write_result
    from sdrt.bench.models import onnx_folder

    folder = onnx_folder("tiny", args.onnx, log=_log)
    result = run_fault_soak(folder, generations=args.generations or 200, log=_log)
    out = Path(args.out or "benchmarks/results") / f"fault-soak-{datetime.date.today().isoformat()}"
    print(f"wrote {write_result(result, out)}")
    return 0 if result["crashes"] == 0 else 1


def main(argv: list[str] | None = None) -> Any:  # pragma: no cover - convenience for `python -m`
    parser = argparse.ArgumentParser(prog="sdrt bench")
    add_arguments(parser)
    return run(parser.parse_args(argv))
