"""Per-step cost of ControlNet: sdrt and diffusers in one run, on the same weights, same machine.

    python -m sdrt.bench.controlnet_step --base sd15-onnx --controlnet cn1-onnx --controlnet cn2-onnx \\
        --size 256 --steps 6 --out benchmarks/results/controlnet-step-DATE

Contenders, one in memory at a time, each warmed up by one call then timed over `--repeats` calls
(median of the per-step denoiser times; a step with ControlNets counts the ControlNets too):

- sdrt ort-cpu: the plain UNet; the residual-taking UNet with zero residuals (what a base pays once
  a ControlNet is loaded, on steps outside every window); one ControlNet; two ControlNets;
- diffusers (fp32, CPU): StableDiffusionPipeline, then StableDiffusionControlNetPipeline with one
  and with two ControlNets (the exported folders' source weights); its step is the call's time less
  the text encoder and the VAE, over the steps (UNet, ControlNets and scheduler: like sdrt's).

Writes result.json / result.md (CPU model, versions) through sdrt.bench.provenance.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sdrt.bench.controlnet_step", description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="exported base model folder (SD 1.x: e.g. the sd15 preset's)")
    p.add_argument("--controlnet", action="append", required=True, help="exported ControlNet folder (1 or 2)")
    p.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    p.add_argument("--steps", type=int, default=6, help="denoising steps per call (default 6)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per contender (default 2)")
    p.add_argument("--out", default=None, help="results folder (default: print only)")
    p.add_argument("--skip-diffusers", action="store_true", help="sdrt contenders only")
    return p.parse_args(argv)


def _median_step(timings: list[list[float]]) -> float:
    return statistics.median(t for call in timings for t in call)


def sdrt_contenders(args: argparse.Namespace, control: Any) -> dict[str, float]:
    from sdrt.runtime import Pipeline

    call = dict(num_inference_steps=args.steps, height=args.size, width=args.size, seed=0, output_type="latent",
                scheduler="euler")
    results = {}
    plans = [("plain UNet", []), ("residual UNet, zero residuals", None)]
    plans += [(f"{k} ControlNet(s)", args.controlnet[:k]) for k in range(1, len(args.controlnet) + 1)]
    for label, nets in plans:
        pipe = Pipeline.load(args.base, backend="ort-cpu", controlnet=nets or (args.controlnet[:1] if nets is None else None))
        extra = {} if nets == [] else {"control_image": control if nets is None or len(nets) == 1 else [control] * len(nets)}
        if nets is None:
            extra["controlnet_conditioning_scale"] = 0.0
            extra["control_guidance_start"], extra["control_guidance_end"] = 0.99, 1.0  # outside every step
        pipe("a house", **call, **extra)  # warm-up
        steps = [pipe("a house", **call, **extra).timings.unet_steps for _ in range(args.repeats)]
        results[f"sdrt ort-cpu: {label}"] = _median_step(steps)
        print(f"{label}: {results[f'sdrt ort-cpu: {label}'] * 1000:.1f} ms/step", file=sys.stderr, flush=True)
        pipe.close()
    return results


def diffusers_contenders(args: argparse.Namespace, control: Any) -> dict[str, float]:
    from sdrt.reference import load_reference

    call = dict(num_inference_steps=args.steps, height=args.size, width=args.size, seed=0, scheduler="euler")
    results = {}
    for k in range(0, len(args.controlnet) + 1):
        ref = load_reference(args.base, controlnet=args.controlnet[:k] or None)
        extra = {"control_image": control if k == 1 else [control] * k} if k else {}
        ref("a house", **call, **extra)
        per_step = []
        for _ in range(args.repeats):  # the whole loop (UNet, ControlNets, scheduler) per step
            t = ref("a house", **call, **extra).timings
            per_step.append([(t.total - t.text_encoder - t.vae_decoder - t.vae_encoder) / args.steps])
        steps = per_step
        label = f"diffusers fp32: {k} ControlNet(s)" if k else "diffusers fp32: plain UNet"
        results[label] = _median_step(steps)
        print(f"{label}: {results[label] * 1000:.1f} ms/step", file=sys.stderr, flush=True)
        del ref
    return results


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from sdrt.bench import environment

    args = parse_args(argv)
    control = Image.fromarray((np.random.default_rng(0).random((args.size, args.size, 3)) * 255).astype(np.uint8))
    machine = environment.describe_machine()
    started = time.time()
    results = sdrt_contenders(args, control)
    if not args.skip_diffusers:
        results.update(diffusers_contenders(args, control))
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    record = {"size": args.size, "steps": args.steps, "repeats": args.repeats, "base": str(args.base),
              "controlnets": [str(c) for c in args.controlnet], "ms_per_step": {k: round(v * 1000, 2) for k, v in results.items()},
              "cpu": machine["cpu_model"], "machine": machine, "versions": machine["versions"],
              "seconds": round(time.time() - started)}
    lines = [f"# ControlNet per-step cost ({args.size}x{args.size} px, {args.steps} steps, CPU {record['cpu']})", "",
             f"CPU {machine['cpu_model']} ({machine['physical_cores']} cores; {', '.join(machine['cpu_features'])}), "
             f"load average {machine['load_average_at_start'][0]} at start, {machine['load_average_at_end'][0]} at "
             f"the end; {args.repeats} timed calls per contender after one warm-up, CFG on (batch 2 per step). sdrt: "
             "median of the per-step denoiser times (ControlNets + UNet); diffusers: (call - text encoder - VAE) "
             "/ steps, median over the calls.", "",
             "| contender | ms / step |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in record["ms_per_step"].items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from sdrt.bench.provenance import write_result

        write_result(Path(args.out), record, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
