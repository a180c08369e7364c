"""Timing statistics: medians and spread, because one timing on a shared machine proves nothing.

Every stage of a benchmark is a list of samples in seconds; ``summarize`` turns it into the
numbers a report shows (median, interquartile range, min, max, count). The median is the
headline because it ignores the odd run that a background process slowed down.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Summary:
    """One stage's timings, in seconds."""

    median_s: float
    q1_s: float
    q3_s: float
    iqr_s: float
    min_s: float
    max_s: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def quantile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method), without numpy."""
    if not samples:
        raise ValueError("quantile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside [0, 1]")
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> Summary:
    """Median, quartiles and extremes of a non-empty list of timings."""
    if not samples:
        raise ValueError("cannot summarize an empty list of timings")
    q1, q3 = quantile(samples, 0.25), quantile(samples, 0.75)
    return Summary(
        median_s=statistics.median(samples), q1_s=q1, q3_s=q3, iqr_s=q3 - q1,
        min_s=min(samples), max_s=max(samples), n=len(samples),
    )


def time_call(fn: Callable[[], object], *, warmup: int, reps: int) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``reps`` times timed; the timings in seconds."""
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def ratio(baseline_s: float, candidate_s: float) -> float | None:
    """How many times faster the candidate is than the baseline (None when undefined)."""
    if candidate_s <= 0 or baseline_s <= 0:
        return None
    return baseline_s / candidate_s
