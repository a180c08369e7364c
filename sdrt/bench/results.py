"""The benchmark's data: what one pipeline call measured, what one run (sdrt or PyTorch) adds up
to, and the whole report. One schema, written as JSON and read back by the markdown and chart
writers; ``benchmarks/README.md`` documents it field by field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sdrt.bench.stats import Summary, ratio, summarize

SCHEMA = "sdrt-bench"
SCHEMA_VERSION = 1

#: stage key -> label in tables and charts. Per-step stages are medians over every step of every rep.
STAGES: dict[str, str] = {
    "text_encoder": "text encoder",
    "unet_step": "UNet / step",
    "host_step": "host / step",
    "vae_decode": "VAE decode",
    "end_to_end": "end to end",
}
PER_STEP = ("unet_step", "host_step")


@dataclass
class CallTimes:
    """Stage timings of one pipeline call, in seconds.

    Host time per step is the loop iteration's wall time minus the UNet's (scheduler, guidance,
    copies); a pipeline may report it for fewer steps than the UNet (diffusers' callbacks only
    bracket steps 2..n).
    """

    text_encoder_s: float
    unet_steps_s: list[float]
    host_steps_s: list[float]
    vae_decode_s: float
    end_to_end_s: float

    def __post_init__(self) -> None:
        if len(self.host_steps_s) > len(self.unet_steps_s):
            raise ValueError(f"{len(self.host_steps_s)} host timings for "
                             f"{len(self.unet_steps_s)} UNet steps")

    @classmethod
    def from_stage_timings(cls, timings: Any, end_to_end_s: float) -> "CallTimes":
        """From `sdrt.runtime.timing.StageTimings` (what sdrt and the reference both return)."""
        return cls(text_encoder_s=timings.text_encoder, unet_steps_s=list(timings.unet_steps),
                   host_steps_s=[max(t, 0.0) for t in timings.host_steps],
                   vae_decode_s=timings.vae_decoder, end_to_end_s=end_to_end_s)


def summarize_calls(calls: list[CallTimes]) -> dict[str, Summary]:
    """Per-stage summaries over timed calls; per-step stages pool the steps of every call."""
    if not calls:
        raise ValueError("no timed calls to summarize")
    samples = {
        "text_encoder": [c.text_encoder_s for c in calls],
        "unet_step": [t for c in calls for t in c.unet_steps_s],
        "host_step": [t for c in calls for t in c.host_steps_s],
        "vae_decode": [c.vae_decode_s for c in calls],
        "end_to_end": [c.end_to_end_s for c in calls],
    }
    return {stage: summarize(values) for stage, values in samples.items() if values}


@dataclass
class RunResult:
    """One contender (an sdrt backend, or the PyTorch reference) in one benchmark."""

    name: str  # "sdrt ort-cpu", "diffusers (torch cpu, fp32)"
    kind: str  # "sdrt" | "reference"
    backend: str  # "ort-cpu", "ort-cuda", "tensorrt", "torch-cpu", "torch-cuda"
    precision: str
    load_s: float
    stages: dict[str, Summary]
    images_per_call: int
    host_rss_peak_mb: float
    host_rss_growth_mb: float
    gpu_peak_mb: float | None = None
    host_rss_after_close_mb: float | None = None  # RSS once it was closed and its memory handed back
    psnr_db: float | None = None  # against the reference's images (sdrt runs only)
    psnr_bf16_db: float | None = None  # bf16 runs: against diffusers' own bf16 (autocast) images
    options: dict[str, Any] = field(default_factory=dict)  # backend options, tuning levers

    @property
    def images_per_s(self) -> float:
        return self.images_per_call / self.stages["end_to_end"].median_s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = {k: v.to_dict() for k, v in self.stages.items()}
        d["images_per_s"] = self.images_per_s
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunResult":
        d = {k: v for k, v in d.items() if k != "images_per_s"}
        d["stages"] = {k: Summary(**v) for k, v in d["stages"].items()}
        return cls(**d)


@dataclass
class Report:
    """A whole benchmark: method, every run, and the speedups against the reference."""

    suite: str
    created: str  # ISO-8601
    method: dict[str, Any]
    runs: list[RunResult]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the soak's series and slope

    @property
    def reference(self) -> RunResult | None:
        return next((r for r in self.runs if r.kind == "reference"), None)

    def speedups(self) -> dict[str, dict[str, float | None]]:
        """run name -> stage -> reference median / run median (>1 means faster than PyTorch)."""
        ref = self.reference
        if ref is None:
            return {}
        return {
            run.name: {stage: ratio(ref.stages[stage].median_s, s.median_s)
                       for stage, s in run.stages.items() if stage in ref.stages}
            | {"load": ratio(ref.load_s, run.load_s)}
            for run in self.runs if run.kind != "reference"
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "suite": self.suite,
            "created": self.created, "method": self.method,
            "runs": [r.to_dict() for r in self.runs], "speedup_vs_reference": self.speedups(),
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Report":
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not an sdrt benchmark report (schema {d.get('schema')!r})")
        return cls(suite=d["suite"], created=d["created"], method=d["method"],
                   runs=[RunResult.from_dict(r) for r in d["runs"]], extra=d.get("extra", {}))
