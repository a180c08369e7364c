"""The soak run: many generations in one process, RSS read after each one; memory must stay flat.

The headline is the least-squares slope of RSS over generations (KB per generation) after the
warm-up, when arenas and caches have reached their size; a leak of one buffer per call shows up
as a slope of that buffer's size. Per-step stages in a soak report are per-generation means
(one number per generation, so the bookkeeping stays preallocated).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable

import numpy as np

from sdrt.bench.contenders import Generation
from sdrt.bench.memory import RssSampler, rss_mb, slope_per_item
from sdrt.bench.results import Report, RunResult
from sdrt.bench.stats import summarize


def run_soak(contender: Any, gen: Generation, *, generations: int, warmup: int, method: dict[str, Any],
             log: Callable[[str], None] = print) -> Report:
    """``generations`` calls after ``warmup`` ones; RSS after each call, its slope in KB/generation."""
    if generations < 2:
        raise ValueError(f"a soak needs at least 2 generations, got {generations}")
    # Preallocated: the loop itself must not grow the heap it measures (no per-call objects kept).
    series = np.zeros(generations)
    stage = {name: np.zeros(generations) for name in ("text_encoder", "unet_step", "host_step", "vae_decode",
                                                      "end_to_end")}
    contender.prepare()
    try:
        with RssSampler(interval_s=0.05) as rss:
            start = time.perf_counter()
            contender.load()
            load_s = time.perf_counter() - start
            for _ in range(warmup):
                contender(gen)
            after_warmup = rss_mb()
            for i in range(generations):
                _, times, _ = contender(gen)
                stage["text_encoder"][i], stage["vae_decode"][i] = times.text_encoder_s, times.vae_decode_s
                stage["end_to_end"][i] = times.end_to_end_s
                stage["unet_step"][i] = sum(times.unet_steps_s) / max(len(times.unet_steps_s), 1)
                stage["host_step"][i] = sum(times.host_steps_s) / max(len(times.host_steps_s), 1)
                series[i] = rss_mb()
                if (i + 1) % max(1, generations // 10) == 0:
                    log(f"  generation {i + 1}/{generations}: RSS {series[i]:.1f} MB")
    finally:
        contender.close()
    series = series.tolist()
    slope_mb = slope_per_item(list(range(1, generations + 1)), series)
    run = RunResult(name=contender.name, kind=contender.kind, backend=contender.device_backend,
                    precision=contender.precision(), load_s=load_s,
                    stages={name: summarize(values.tolist()) for name, values in stage.items()},
                    images_per_call=gen.batch, host_rss_peak_mb=rss.peak_mb,
                    host_rss_growth_mb=rss.growth_mb, options=dict(getattr(contender, "options", {}) or {}))
    soak = {
        "generations": generations, "warmup": warmup,
        "rss_after_warmup_mb": after_warmup, "rss_first_mb": series[0], "rss_last_mb": series[-1],
        "rss_max_mb": max(series), "slope_kb_per_generation": slope_mb * 1024.0,
        # the second half alone: after one-time growth (arenas, caches), what a leak would leave
        "slope_second_half_kb_per_generation": 1024.0 * slope_per_item(
            list(range(generations // 2, generations)), series[generations // 2:]),
        "rss_mb": series,
    }
    log(f"  RSS {series[0]:.1f} -> {series[-1]:.1f} MB over {generations} generations: "
        f"slope {soak['slope_kb_per_generation']:.3f} KB/generation")
    return Report(suite="soak", created=datetime.now().isoformat(timespec="seconds"),
                  method=method, runs=[run], extra={"soak": soak})
