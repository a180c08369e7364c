"""Per-stage timings of one pipeline call: what `sdrt demo` and the benchmarks report.

Every call records them (a few `perf_counter` reads, no synchronisation of its own: each engine's
`run` returns host arrays, so a stage's time includes its device work). Read them from
`result.timings`; the loop is not duplicated anywhere to measure it.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class StageTimings:
    """Seconds. `unet_steps[i]`: step i's UNet engine time (inputs in, run, `out_sample` out);
    `host_steps[i]`: the rest of step i (CFG, scheduler, copies) — the runtime's own overhead."""

    text_encoder: float = 0.0
    vae_encoder: float = 0.0
    unet_steps: list[float] = field(default_factory=list)
    host_steps: list[float] = field(default_factory=list)
    vae_decoder: float = 0.0
    total: float = 0.0

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Add the block's wall time to a scalar stage (text_encoder, vae_encoder, vae_decoder)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, stage, getattr(self, stage) + time.perf_counter() - start)

    @property
    def unet_per_step(self) -> float:
        """Median UNet time per step (0 when no step ran)."""
        return statistics.median(self.unet_steps) if self.unet_steps else 0.0

    @property
    def host_per_step(self) -> float:
        return statistics.median(self.host_steps) if self.host_steps else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "text_encoder_s": self.text_encoder,
            "vae_encoder_s": self.vae_encoder,
            "unet_per_step_s": self.unet_per_step,
            "unet_total_s": sum(self.unet_steps),
            "host_per_step_s": self.host_per_step,
            "steps": len(self.unet_steps),
            "vae_decoder_s": self.vae_decoder,
            "total_s": self.total,
        }


def merge(runs: list[StageTimings]) -> StageTimings:
    """Several calls' timings as one: per-call stages by their median, steps pooled (for medians)."""
    def median(stage: str) -> float:
        return statistics.median(getattr(r, stage) for r in runs)

    return StageTimings(
        text_encoder=median("text_encoder"), vae_encoder=median("vae_encoder"),
        unet_steps=[s for r in runs for s in r.unet_steps], host_steps=[s for r in runs for s in r.host_steps],
        vae_decoder=median("vae_decoder"), total=median("total"),
    )
