"""The statistics the reports are built on: quantiles, summaries, slopes."""

import math

import numpy as np
import pytest

from sdrt.bench.memory import RssSampler, slope_per_item
from sdrt.bench.stats import quantile, ratio, summarize, time_call


def until(condition, timeout_s: float = 60.0) -> bool:
    """Poll `condition` until it holds (True) or `timeout_s` passes (False): the sampler thread runs
    when the machine lets it, so the tests wait for what it must see instead of sleeping a fixed time."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_quantile_matches_numpy_linear_interpolation():
    rng = np.random.default_rng(0)
    samples = list(rng.random(17))
    for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        assert quantile(samples, q) == pytest.approx(float(np.quantile(samples, q)))


def test_summarize_median_iqr_and_extremes():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s.median_s == 3.0
    assert (s.q1_s, s.q3_s, s.iqr_s) == (2.0, 4.0, 2.0)
    assert (s.min_s, s.max_s, s.n) == (1.0, 5.0, 5)


def test_summarize_ignores_an_outlier_in_the_median():
    assert summarize([1.0, 1.0, 1.0, 100.0]).median_s == 1.0


def test_summarize_refuses_empty_and_bad_quantile():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)


def test_time_call_runs_warmup_untimed_then_reps():
    calls = []
    samples = time_call(lambda: calls.append(1), warmup=2, reps=3)
    assert len(calls) == 5 and len(samples) == 3
    assert all(t >= 0 for t in samples)
    with pytest.raises(ValueError):
        time_call(lambda: None, warmup=0, reps=0)


def test_ratio_is_baseline_over_candidate():
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(1.0, 0.0) is None


def test_slope_per_item_recovers_a_linear_trend():
    xs = list(range(50))
    ys = [100.0 + 0.25 * x + (0.01 if x % 2 else -0.01) for x in xs]
    assert slope_per_item(xs, ys) == pytest.approx(0.25, abs=1e-3)
    assert slope_per_item([1.0], [2.0]) == 0.0
    with pytest.raises(ValueError):
        slope_per_item([1.0, 2.0], [1.0])


def test_rss_sampler_sees_a_short_lived_allocation():
    with RssSampler(interval_s=0.001, keep_samples=True) as rss:
        block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, touched
        block += 1
        taken = len(rss.samples)
        assert until(lambda: len(rss.samples) >= taken + 2)  # a whole sample taken while the block lives
        del block
    assert rss.growth_mb > 40
    assert rss.samples and all(math.isfinite(v) for _, v in rss.samples)


def test_rss_sampler_tells_anonymous_from_file_pages(tmp_path):
    import mmap

    from sdrt.bench.memory import anon_mb

    if anon_mb() is None:
        pytest.skip("no RssAnon in /proc/self/status here (not Linux)")
    path = tmp_path / "pages"
    path.write_bytes(b"\0" * (64 * 1024 * 1024))
    with open(path, "r+b") as f, RssSampler(interval_s=0.001) as file_backed:
        mapped = mmap.mmap(f.fileno(), 0)
        view = np.frombuffer(mapped, dtype=np.uint8)
        view[::4096] = 1  # every page touched: resident, but file pages
        until(lambda: file_backed.growth_mb > 40)  # the sampler saw the pages (asserted below)
        del view
        mapped.close()
    with RssSampler(interval_s=0.001) as anonymous:
        block = np.ones(64 * 1024 * 1024 // 8)
        until(lambda: anonymous.anon_peak_mb - anonymous.anon_start_mb > 40)  # asserted below
        del block
    assert file_backed.growth_mb > 40 and file_backed.anon_peak_mb - file_backed.anon_start_mb < 20
    assert anonymous.anon_peak_mb - anonymous.anon_start_mb > 40
