"""Host cost of one scheduler step at SDXL-size latents (1x4x128x128, a 1024^2 image), per scheduler name.

Each scheduler runs whole trajectories (default 30 steps, repeated) on a fixed stand-in model output;
every `scale_model_input` and `step` call is timed alone with perf_counter. Reported: the median and
the 90th percentile of `step` as the pipeline calls it (stochastic samplers drawing from a numpy
Generator), the median of `scale_model_input` + `step`, and the median of `step` with the noise
supplied pre-drawn (`noise=`), which separates the sampler's arithmetic from the Gaussian draw.
Goal: under 1 ms a step.

    .venv/bin/python -m sdrt.bench.schedulers_bench [--steps 30] [--repeats 5] [--shape 1,4,128,128]

It prints a markdown table (no results folder).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from sdrt.runtime.schedulers import SCHEDULERS, get_scheduler

SD15 = {  # the model config each name is built on
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def run_trajectories(name: str, shape: tuple[int, ...], steps: int, repeats: int, supply_noise: bool):
    """Per-call times of scale_model_input + step and of step alone, over `repeats` timed trajectories."""
    rng = np.random.default_rng(0)
    model_output = rng.standard_normal(shape, dtype=np.float32)
    start = rng.standard_normal(shape, dtype=np.float32)
    noise = rng.standard_normal(shape, dtype=np.float32) if supply_noise else None
    step_times, total_times = [], []
    for repeat in range(repeats + 1):  # the first run warms up and is not counted
        sched = get_scheduler(name, SD15)
        sched.set_timesteps(steps)
        x = start * np.float32(sched.init_noise_sigma)
        gen = np.random.default_rng(repeat)
        for t in sched.timesteps:
            t0 = time.perf_counter()
            sched.scale_model_input(x, t)
            t1 = time.perf_counter()
            x = sched.step(model_output, t, x, generator=gen, noise=noise).prev_sample
            t2 = time.perf_counter()
            if repeat:
                step_times.append(t2 - t1)
                total_times.append(t2 - t0)
    return type(sched).__name__, np.array(step_times) * 1e3, np.array(total_times) * 1e3


def time_scheduler(name: str, shape: tuple[int, ...], steps: int, repeats: int) -> dict[str, float]:
    cls, step_ms, total_ms = run_trajectories(name, shape, steps, repeats, supply_noise=False)
    _, supplied_ms, _ = run_trajectories(name, shape, steps, repeats, supply_noise=True)
    return {
        "class": cls,
        "median": float(np.median(step_ms)),
        "p90": float(np.percentile(step_ms, 90)),
        "with_scale": float(np.median(total_ms)),
        "supplied": float(np.median(supplied_ms)),
        "n": len(step_ms),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdrt.bench.schedulers_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shape", default="1,4,128,128")
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))

    print(f"latent {shape}, float32, {args.steps}-step trajectories x {args.repeats} (after 1 warm-up run); "
          f"numpy {np.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print()
    print("| name | class | step median (ms) | step p90 (ms) | scale_model_input + step median (ms) "
          "| step, noise supplied, median (ms) | samples |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in SCHEDULERS:
        r = time_scheduler(name, shape, args.steps, args.repeats)
        print(f"| {name} | {r['class']} | {r['median']:.3f} | {r['p90']:.3f} | {r['with_scale']:.3f} "
              f"| {r['supplied']:.3f} | {r['n']} |")


if __name__ == "__main__":
    main()
