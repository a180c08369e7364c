"""One benchmark: every contender on the same generation, measured the same way, in one process.

sdrt's backends run first, before torch is imported (their memory numbers are their own), then
the PyTorch reference; PSNR of each sdrt run against the reference's images goes next to its
speed. Each contender: load (timed), warm-up calls, timed calls, host RSS (and GPU memory) sampled
from the start of loading to the end of the last call. Contenders run one after the other: each is
closed and its memory handed back (`memory.release_memory`) before the next one loads, and the
RSS left then is recorded (``host_rss_after_close_mb``), so a report shows that the memory of the
largest contender, not the sum of all, is what a run needs.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable

import numpy as np

from sdrt.bench.contenders import Generation, psnr
from sdrt.bench.memory import GpuPeakSampler, RssSampler, release_memory
from sdrt.bench.results import Report, RunResult, summarize_calls

Log = Callable[[str], None]
RELEASE = ("one contender at a time: each is closed (its engines or PyTorch modules dropped), then gc.collect() "
           "and glibc malloc_trim(0), before the next one loads; 'host RSS after close' is the process's RSS then")


def measure(contender: Any, gen: Generation, *, warmup: int, reps: int, log: Log = print
            ) -> tuple[RunResult, np.ndarray, dict[str, Any]]:
    """Load, warm up and time one contender; its result, last images and call parameters."""
    contender.prepare()
    with RssSampler() as rss, GpuPeakSampler() as gpu:
        start = time.perf_counter()
        contender.load()
        load_s = time.perf_counter() - start
        log(f"  {contender.name}: loaded in {load_s:.2f} s")
        for i in range(warmup):
            _, times, _ = contender(gen)
            log(f"  {contender.name}: warm-up {i + 1}/{warmup}: {times.end_to_end_s:.3f} s")
        calls = []
        for i in range(reps):
            images, times, parameters = contender(gen)
            calls.append(times)
            log(f"  {contender.name}: call {i + 1}/{reps}: {times.end_to_end_s:.3f} s")
    result = RunResult(
        name=contender.name, kind=contender.kind, backend=contender.device_backend,
        precision=contender.precision(), load_s=load_s, stages=summarize_calls(calls),
        images_per_call=gen.batch, host_rss_peak_mb=rss.peak_mb, host_rss_growth_mb=rss.growth_mb,
        gpu_peak_mb=gpu.peak_mb, options=dict(getattr(contender, "options", {}) or {}),
    )
    return result, images, parameters


def run_benchmark(suite_name: str, contenders: list[Any], gen: Generation, *, warmup: int, reps: int,
                  method: dict[str, Any], log: Log = print) -> Report:
    """Measure every contender (sdrt ones first), then fill in PSNR against the reference."""
    ordered = sorted(contenders, key=lambda c: bool(getattr(c, "uses_torch", c.kind == "reference")))
    runs, images, parameters = [], {}, {}
    for contender in ordered:
        log(f"{contender.name} ...")
        try:
            run, images[contender.name], params = measure(contender, gen, warmup=warmup, reps=reps, log=log)
            if getattr(contender, "uses_torch", False) and hasattr(contender, "threads"):
                method = method | {"torch_threads": contender.threads()}
            else:
                parameters = parameters or params
        finally:
            contender.close()
            after_close = release_memory()
        run.host_rss_after_close_mb = after_close
        log(f"  {contender.name}: closed; host RSS {after_close:,.0f} MB")
        runs.append(run)
    reference = next((r for r in runs if r.kind == "reference"), None)
    bf16_reference = next((r for r in runs if r.kind != "sdrt" and r.backend.startswith("torch")
                           and r.precision == "bf16"), None)
    for run in runs:
        if reference is not None and run is not reference:
            run.psnr_db = psnr(images[run.name], images[reference.name])
        if bf16_reference is not None and run is not bf16_reference and run.precision == "bf16":
            run.psnr_bf16_db = psnr(images[run.name], images[bf16_reference.name])
    method = method | {"scheduler": parameters.get("scheduler", gen.scheduler), "memory_release": RELEASE}
    return Report(suite=suite_name, created=datetime.now().isoformat(timespec="seconds"),
                  method=method, runs=runs)
