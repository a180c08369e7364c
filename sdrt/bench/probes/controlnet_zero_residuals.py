"""One base, ort-cpu: the plain UNet vs the residual-taking UNet fed zero residuals, calls interleaved.

    python -m sdrt.bench.probes.controlnet_zero_residuals BASE_DIR CONTROLNET_DIR [--size 256]
        [--steps 3] [--rounds 3]

Both pipelines stay loaded (two UNet sessions: twice the UNet's memory) so that their calls alternate
and a busy machine's load falls on both alike. "Zero residuals" is a pipeline loaded with the
ControlNet whose window covers no step (the UNet then gets zero residuals: what a base pays on the
steps outside every window). Prints each round's per-step UNet times and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from sdrt.bench import environment
    from sdrt.runtime import Pipeline

    p = argparse.ArgumentParser(prog="python -m sdrt.bench.probes.controlnet_zero_residuals",
                                description=__doc__.split("\n")[0])
    p.add_argument("base")
    p.add_argument("controlnet")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    call = dict(num_inference_steps=args.steps, height=args.size, width=args.size, seed=0, output_type="latent",
                scheduler="euler")
    control = Image.fromarray((np.random.default_rng(0).random((args.size, args.size, 3)) * 255).astype(np.uint8))
    zero = dict(control_image=control, controlnet_conditioning_scale=0.0, control_guidance_start=0.99,
                control_guidance_end=1.0)
    print(f"CPU {environment.cpu_model()} ({', '.join(environment.cpu_features())}); load {os.getloadavg()}",
          flush=True)
    pipes = {"plain": (Pipeline.load(args.base, backend="ort-cpu"), {}),
             "zero residuals": (Pipeline.load(args.base, backend="ort-cpu", controlnet=[args.controlnet]), zero)}
    for pipe, extra in pipes.values():
        pipe("a house", **call, **extra)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in pipes}
    for r in range(args.rounds):
        for name, (pipe, extra) in pipes.items():
            times[name] += pipe("a house", **call, **extra).timings.unet_steps
            print(r, name, [round(t * 1000) for t in times[name][-args.steps:]], "ms; load",
                  round(os.getloadavg()[0], 2), flush=True)
    for name, t in times.items():
        print(f"{name}: median {statistics.median(t) * 1000:.0f} ms/step over {len(t)} steps")
    print(f"load at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
